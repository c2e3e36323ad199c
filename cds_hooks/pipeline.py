"""One hook call, start to finish: request -> records -> facts -> findings -> cards.

Raises ``BadRequest`` (400), ``prefetch.WrongPatient`` (400, also for a draft order naming
another patient), ``fhir_read.MalformedResource`` (400) or ``prefetch.DataUnavailable`` (412);
the HTTP layer maps them. Each step lives in its own module.
"""

from __future__ import annotations

from datetime import date

from pydantic import ValidationError

from cds_hooks.cards import render_cards
from cds_hooks.facts import build_facts
from cds_hooks.prefetch import check_patient, resolve_prefetch
from cds_hooks.protocol import (CONTEXT_MODELS, HookRequest, HookResponse, OrderSelectContext, OrderSignContext,
                                ServiceDescription)
from cds_hooks.runtime import Runtime


class BadRequest(ValueError):
    """The request cannot be answered as sent; the message says why."""


def parse_request(body: bytes | str | dict, service: ServiceDescription) -> HookRequest:
    """Validate a hook request for this service: JSON, required fields, the hook's context."""
    try:
        request = (HookRequest.model_validate(body) if isinstance(body, dict)
                   else HookRequest.model_validate_json(body))
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from exc
    if request.hook != service.hook:
        raise BadRequest(f"service {service.id} answers the {service.hook} hook, not {request.hook!r}")
    try:
        context = CONTEXT_MODELS[service.hook].model_validate(request.context)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, prefix="context")) from exc
    if isinstance(context, OrderSignContext):
        drafts = [e["resource"] for e in context.draftOrders.entry if isinstance(e.get("resource"), dict)]
        check_patient("context.draftOrders", drafts, context.patientId)
    if isinstance(context, OrderSelectContext):
        _check_selections(context)
    return request


def _check_selections(context: OrderSelectContext) -> None:
    """Each selection must name a draft order: a dangling one would silently fire nothing."""
    drafts = {f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}"
              for e in context.draftOrders.entry if isinstance(e.get("resource"), dict)}
    missing = [s for s in context.selections if s not in drafts]
    if missing:
        raise BadRequest(f"context.selections names {', '.join(missing)}, which is not in context.draftOrders")


def answer(runtime: Runtime, request: HookRequest, as_of: date | None = None) -> HookResponse:
    token = request.fhirAuthorization.access_token.get_secret_value() if request.fhirAuthorization else None
    records = resolve_prefetch(context=request.context, prefetch=request.prefetch,
                               fhir_server=request.fhirServer, access_token=token, client=runtime.fhir_client)
    as_of = as_of or runtime.settings.as_of or date.today()
    facts = build_facts(request.hook, request.context, records, runtime.terminology, as_of)
    findings = runtime.engine.evaluate(request.hook, facts)
    cards = render_cards(findings, request.context["patientId"], runtime.terminology)
    return HookResponse(cards=cards)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """'missing required field: context.patientId; ...' rather than pydantic's dump."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in ((prefix,) if prefix else ()) + tuple(error["loc"]))
        if error["type"] == "missing":
            problems.append(f"missing required field: {where}")
        elif error["type"] == "json_invalid":
            problems.append(f"malformed JSON: {error['ctx'].get('error', error['msg'])}")
        else:
            problems.append(f"{where or 'body'}: {error['msg']}")
    return "; ".join(problems)
