"""One-click suggestions: the FHIR actions a card offers, built from the facts that fired it.

A rule pack names a suggestion by ``kind``; each kind is a builder here. Kinds that order
something take an ``order`` from the pack:

    medication: {rxnorm: "596930", dose_mg: 30, times_per_day: 1, when: [HS], text: "..."}
    service:    {system: http://loinc.org, code: 2132-9, display: "...", text: "..."}

Every resource a suggestion creates is validated with ``fhir.resources.R4B`` before it
leaves the service, and once at start-up with a placeholder patient (``check_order``). A
builder returns no actions when it has nothing safe to offer (no next titration step, no
draft order to remove), and the suggestion is then left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_hooks.dosage import UCUM
from cds_hooks.terminology import RXNORM, Terminology

_TIMES = {1: "once daily", 2: "twice daily", 3: "3 times daily", 4: "4 times daily"}


@dataclass(frozen=True)
class SuggestionInput:
    subject: dict  # the fact the card is about (card.one_per), or the first bound fact
    triggers: list[dict]  # every trigger fact that fired the card
    parameters: dict[str, Any]
    patient_id: str
    terminology: Terminology
    order: dict | None = None  # the suggestion's order, parameters resolved


def titrate_medication(given: SuggestionInput) -> list[dict]:
    """A draft MedicationRequest from ``titration_steps``. A stopped drug restarts at the first
    step, to re-titrate from (never at the dose it was stopped at, nor higher). A running drug
    moves to the first step above its current dose, replacing its current order in the same
    suggestion; when that order is not a MedicationRequest here, nothing is offered, so that
    accepting can never leave two orders of the same drug."""
    trial = given.subject
    steps = given.parameters.get("titration_steps", {}).get(trial.get("ingredient"), [])
    if trial.get("status") == "stopped" and steps:
        target = given.parameters.get("target_daily_mg")
        then = f", then titrate toward ≥{target} mg/day as tolerated" if target else ""
        return [_create({**steps[0], "text": f"Restart: {_sig(steps[0])}{then}"}, given)]
    current, current_order = trial.get("current_daily_mg"), trial.get("current_source", "")
    step = next((s for s in steps if current is not None and s["daily_mg"] > current), None)
    if step is None or not current_order.startswith("MedicationRequest/"):
        return []
    return [{"type": "delete", "description": f"Stop the current {trial['ingredient']} order ({current} mg/day)",
             "resourceId": current_order}, _create(step, given)]


def order(given: SuggestionInput) -> list[dict]:
    """Create the suggestion's order (a MedicationRequest or a ServiceRequest)."""
    return [_create(given.order, given)]


def order_for_subject_class(given: SuggestionInput) -> list[dict]:
    """Create the order listed for the drug class of the card's subject, to take with it. Nothing
    when no order is listed, or when the subject drug is no longer taken (the new drug alone
    would be a switch, not a combination)."""
    chosen = given.order.get(given.subject.get("drug_class"))
    return [_create(chosen, given)] if chosen and given.subject.get("status", "active") == "active" else []


def remove_trigger_order(given: SuggestionInput) -> list[dict]:
    """Delete the draft orders that fired the card (never an active order from the record)."""
    return [{"type": "delete", "description": f"Remove the draft order for {t.get('display')}",
             "resourceId": t["reference"]} for t in given.triggers if t.get("origin") == "draft"]


def replace_trigger_order(given: SuggestionInput) -> list[dict]:
    """Delete the draft orders that fired the card and create the suggestion's order instead."""
    removals = remove_trigger_order(given)
    return removals + order(given) if removals else []


@dataclass(frozen=True)
class Builder:
    build: Callable[[SuggestionInput], list[dict]]
    needs_order: bool = False
    orders_by_class: bool = False  # the order is a mapping: drug class -> order
    parameters: tuple[str, ...] = ()  # rule parameters the builder reads


SUGGESTION_BUILDERS: dict[str, Builder] = {
    "titrate-medication": Builder(titrate_medication, parameters=("titration_steps",)),
    "order": Builder(order, needs_order=True),
    "order-for-subject-class": Builder(order_for_subject_class, needs_order=True, orders_by_class=True),
    "remove-trigger-order": Builder(remove_trigger_order),
    "replace-trigger-order": Builder(replace_trigger_order, needs_order=True),
}


def resolve_order(order: str | dict | None, parameters: dict) -> dict | None:
    """A suggestion's order: inline, or the rule parameter it names with "$name"."""
    return parameters[order[1:]] if isinstance(order, str) else order


def check_order(order_spec: dict, terminology: Terminology) -> None:
    """Build and validate the order for a placeholder patient; raises ValueError when it cannot be sent."""
    if not isinstance(order_spec, dict):
        raise ValueError(f"an order is a mapping, got {order_spec!r}")
    try:
        _create(order_spec, SuggestionInput({}, [], {}, "placeholder", terminology))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"order {order_spec!r} is not a valid FHIR R4 order: {exc}") from exc


def _create(spec: dict, given: SuggestionInput) -> dict:
    resource = _medication_request(spec, given) if "rxnorm" in spec else _service_request(spec, given)
    _validate(resource)  # raises on an invalid resource: no card beats a bad order
    what = resource.get("medicationCodeableConcept", resource.get("code"))["text"]
    return {"type": "create", "description": f"Order {what}", "resource": resource}


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_MODELS = {"MedicationRequest": MedicationRequest, "ServiceRequest": ServiceRequest}


def _validate(resource: dict) -> None:
    """Validate a suggested resource with the R4B models. Orders differ between patients only
    by the subject reference, so the rest is validated once per distinct order and the
    patient id is checked against the FHIR id syntax."""
    patient_id = resource["subject"]["reference"].removeprefix("Patient/")
    if not _FHIR_ID.match(patient_id):
        raise ValueError(f"patient id {patient_id!r} is not a FHIR id")
    _validate_order(json.dumps({**resource, "subject": {"reference": "Patient/placeholder"}}, sort_keys=True))


@lru_cache(maxsize=1024)
def _validate_order(resource_json: str) -> None:
    resource = json.loads(resource_json)
    _MODELS[resource["resourceType"]].model_validate(resource)


def _medication_request(spec: dict, given: SuggestionInput) -> dict:
    product = given.terminology.products[str(spec["rxnorm"])]
    dosage: dict[str, Any] = {"text": spec.get("text") or _sig(spec)}
    if "dose_mg" in spec:
        repeat: dict[str, Any] = {"frequency": spec["times_per_day"], "period": 1, "periodUnit": "d"}
        if spec.get("when"):
            repeat["when"] = spec["when"]
        dosage["timing"] = {"repeat": repeat}
        dosage["doseAndRate"] = [{"doseQuantity": {"value": spec["dose_mg"], "unit": "mg", "system": UCUM, "code": "mg"}}]
    return {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{given.patient_id}"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": str(spec["rxnorm"]), "display": product["display"]}],
            "text": product["display"],
        },
        "dosageInstruction": [dosage],
    }


def _service_request(spec: dict, given: SuggestionInput) -> dict:
    """A ServiceRequest coded when the order names a code (text alone where no code is verified)."""
    coding = {key: str(spec[key]) for key in ("system", "code", "display") if key in spec}
    code = {"coding": [coding]} if coding else {}
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{given.patient_id}"},
        "code": {**code, "text": spec.get("text") or spec["display"]},
    }


def _sig(step: dict) -> str:
    times = "at bedtime" if step.get("when") == ["HS"] else _TIMES.get(step["times_per_day"], f"{step['times_per_day']} times daily")
    daily = f" ({step['daily_mg']} mg/day)" if "daily_mg" in step else ""
    return f"{step['dose_mg']} mg by mouth {times}{daily}"
