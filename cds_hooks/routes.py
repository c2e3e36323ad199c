"""HTTP routes of the CDS Hooks 2.0 API: discovery, service calls and feedback."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from cds_hooks import pipeline
from cds_hooks.cards import CARD_EXTENSION
from cds_hooks.feedback_store import FeedbackItem, IssuedCard
from cds_hooks.protocol import Discovery, FeedbackRequest, HookResponse, ServiceDescription
from cds_hooks.runtime import Runtime
from cds_hooks.services import SERVICES

router = APIRouter()


class UnknownService(LookupError):
    """No service with that id (answered with 404)."""


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_service(service_id: str) -> ServiceDescription:
    if service_id not in SERVICES:
        raise UnknownService(f"no CDS service with id {service_id!r}; GET /cds-services lists them")
    return SERVICES[service_id]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ServiceDep = Annotated[ServiceDescription, Depends(get_service)]


@router.get("/cds-services", response_model=Discovery, response_model_exclude_none=True)
def discovery() -> Discovery:
    """https://cds-hooks.hl7.org/2.0/#discovery"""
    return Discovery(services=list(SERVICES.values()))


@router.post("/cds-services/{service_id}", response_model=HookResponse)
async def call_service(request: Request, service: ServiceDep, runtime: RuntimeDep,
                       background: BackgroundTasks) -> Response:
    """https://cds-hooks.hl7.org/2.0/#calling-a-cds-service

    The answer was validated card by card as it was built; it is serialized once, here,
    without null or empty optional fields.
    """
    hook_request = pipeline.parse_request(await request.body(), service)
    response = await run_in_threadpool(pipeline.answer, runtime, hook_request)
    if runtime.store and response.cards:
        issued = [IssuedCard(c.uuid, c.extension[CARD_EXTENSION]["ruleId"], c.extension[CARD_EXTENSION]["ruleVersion"])
                  for c in response.cards]
        background.add_task(runtime.store.record_issued_cards, service.id, hook_request.hookInstance, issued)
    return Response(response.model_dump_json(exclude_none=True), media_type="application/json",
                    background=background)


@router.post("/cds-services/{service_id}/feedback")
async def feedback(request: Request, service: ServiceDep, runtime: RuntimeDep) -> dict:
    """https://cds-hooks.hl7.org/2.0/#feedback"""
    try:
        body = FeedbackRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise pipeline.BadRequest(pipeline.describe_validation_error(exc)) from exc
    items = [FeedbackItem(
        card_uuid=entry.card, outcome=entry.outcome, outcome_timestamp=entry.outcomeTimestamp,
        accepted_suggestions=[s.id for s in entry.acceptedSuggestions],
        override_reason=entry.overrideReason.model_dump(exclude_none=True) if entry.overrideReason else None,
    ) for entry in body.feedback]
    if runtime.store:
        await run_in_threadpool(runtime.store.record_feedback, service.id, items)
    return {"stored": len(items) if runtime.store else 0}
