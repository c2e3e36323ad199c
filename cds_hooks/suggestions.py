"""One-click suggestions: the FHIR actions a card offers, built from the facts that fired it.

A rule pack names a suggestion by ``kind``; each kind is a builder here. Every resource a
suggestion creates is validated with ``fhir.resources.R4B`` before it leaves the service.
A builder returns no actions when it has nothing safe to offer (no next titration step, no
draft order to remove), and the suggestion is then left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest

from cds_hooks.terminology import RXNORM, Terminology

UCUM = "http://unitsofmeasure.org"
_TIMES = {1: "once daily", 2: "twice daily", 3: "3 times daily", 4: "4 times daily"}


@dataclass(frozen=True)
class SuggestionInput:
    subject: dict  # the fact the card is about (card.one_per), or the first bound fact
    triggers: list[dict]  # every trigger fact that fired the card
    parameters: dict[str, Any]
    patient_id: str
    terminology: Terminology


def titrate_medication(given: SuggestionInput) -> list[dict]:
    """A draft MedicationRequest at the first titration step above the dose reached."""
    trial = given.subject
    reached = trial.get("current_daily_mg", trial.get("max_daily_mg"))
    steps = given.parameters.get("titration_steps", {}).get(trial.get("ingredient"), [])
    step = next((s for s in steps if reached is not None and s["daily_mg"] > reached), None)
    if step is None:
        return []
    product = given.terminology.products[str(step["rxnorm"])]
    resource = _medication_request(step, product, given)
    MedicationRequest.model_validate(resource)  # raises on an invalid resource: no card beats a bad order
    return [{"type": "create", "description": f"Order {product['display']}, {_sig(step)}", "resource": resource}]


def remove_trigger_order(given: SuggestionInput) -> list[dict]:
    """Delete the draft orders that fired the card (never an active order from the record)."""
    return [{"type": "delete", "description": f"Remove the draft order for {t.get('display')}",
             "resourceId": t["reference"]} for t in given.triggers if t.get("origin") == "draft"]


SUGGESTION_BUILDERS: dict[str, Callable[[SuggestionInput], list[dict]]] = {
    "titrate-medication": titrate_medication,
    "remove-trigger-order": remove_trigger_order,
}


def _medication_request(step: dict, product: dict, given: SuggestionInput) -> dict:
    repeat: dict[str, Any] = {"frequency": step["times_per_day"], "period": 1, "periodUnit": "d"}
    if step.get("when"):
        repeat["when"] = step["when"]
    return {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{given.patient_id}"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": str(step["rxnorm"]), "display": product["display"]}],
            "text": product["display"],
        },
        "dosageInstruction": [{
            "text": f"{_sig(step)} ({step['daily_mg']} mg/day)",
            "timing": {"repeat": repeat},
            "doseAndRate": [{"doseQuantity": {"value": step["dose_mg"], "unit": "mg", "system": UCUM, "code": "mg"}}],
        }],
    }


def _sig(step: dict) -> str:
    times = "at bedtime" if step.get("when") == ["HS"] else _TIMES.get(step["times_per_day"], f"{step['times_per_day']} times daily")
    return f"{step['dose_mg']} mg by mouth {times}"
