"""FHIR R4 record -> normalized facts, the only thing rules see.

Facts are flat JSON objects with a ``kind``; ``FACT_FIELDS`` lists what each kind may
carry, and rule packs are checked against it at load time. A field that cannot be known is
absent (never null and never guessed), so a comparison on it does not match.

Context facts describe the patient's record; trigger facts are what the clinician is acting
on: the selected draft orders (order-select), all draft orders (order-sign) or the active
medication orders (patient-view). The engine asserts triggers after the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds_hooks.dosage import daily_dose_mg
from cds_hooks.exposures import exposure_facts, medication_records
from cds_hooks.fhir_read import codings, concept_text, parse_date, reference_of
from cds_hooks.terminology import Terminology

FACT_FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(fields.split()) for kind, fields in {
        "patient": "id age gender",
        "condition": "id reference code display value_sets onset days_since_onset",
        "medication": "id ingredient drug_class status course stop_reason dose_known start end "
                      "days_on_therapy max_daily_mg days_at_max current_daily_mg dose_unknown_reason sources",
        "lab": "id reference concept value unit date days_ago",
        "procedure": "id reference display value_sets status date days_ago",
        "service_request": "id reference display value_sets status date days_ago",
        "trigger": "id origin reference resource_type ingredient drug_class display value_sets daily_mg",
    }.items()
}
TRIGGER_KINDS = frozenset({"trigger"})

_ACTIVE_CLINICAL = {None, "active", "recurrence", "relapse"}
_UNCONFIRMED = {"refuted", "entered-in-error"}
_RESULT_STATUSES = {"final", "amended", "corrected"}


@dataclass(frozen=True)
class FactSet:
    context: list[dict]
    triggers: list[dict]


def build_facts(hook: str, context: dict, records: dict[str, list[dict]],
                terminology: Terminology, as_of: date) -> FactSet:
    history = medication_records(records.get("medicationStatements", []) + records.get("medicationRequests", []),
                                 terminology, as_of)
    facts = (
        [_patient_fact(p, as_of) for p in records.get("patient", [])]
        + _condition_facts(records.get("conditions", []), terminology, as_of)
        + exposure_facts(history, terminology)
        + _lab_facts(records.get("observations", []), terminology, as_of)
        + _event_facts("procedure", records.get("procedures", []), terminology, as_of)
        + _event_facts("service_request", records.get("serviceRequests", []), terminology, as_of)
    )
    return FactSet(context=facts, triggers=_trigger_facts(hook, context, records, terminology))


def _patient_fact(patient: dict, as_of: date) -> dict:
    born = parse_date(patient.get("birthDate"))
    age = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day)) if born else None
    return _compact({"kind": "patient", "id": "patient", "age": age, "gender": patient.get("gender")})


def _condition_facts(conditions: list[dict], terminology: Terminology, as_of: date) -> list[dict]:
    facts = []
    for condition in conditions:
        clinical = next((c.get("code") for c in codings(condition.get("clinicalStatus"))), None)
        verification = next((c.get("code") for c in codings(condition.get("verificationStatus"))), None)
        value_sets = terminology.value_sets_of(codings(condition.get("code")))
        if clinical in _ACTIVE_CLINICAL and verification not in _UNCONFIRMED and value_sets:
            onset = parse_date(condition.get("onsetDateTime") or condition.get("recordedDate"))
            facts.append(_compact({
                "kind": "condition", "id": reference_of(condition), "reference": reference_of(condition),
                "code": next((c.get("code") for c in codings(condition.get("code"))), None),
                "display": concept_text(condition.get("code")), "value_sets": value_sets,
                "onset": onset and onset.isoformat(), "days_since_onset": _days_between(onset, as_of),
            }))
    return facts


def _lab_facts(observations: list[dict], terminology: Terminology, as_of: date) -> list[dict]:
    """The latest numeric result per lab value set."""
    latest: dict[str, tuple[date, dict]] = {}
    for obs in observations:
        taken = parse_date(obs.get("effectiveDateTime") or obs.get("issued")
                           or (obs.get("effectivePeriod") or {}).get("start"))
        quantity = obs.get("valueQuantity") or {}
        if obs.get("status") not in _RESULT_STATUSES or taken is None or "value" not in quantity:
            continue
        for concept in terminology.value_sets_of(codings(obs.get("code"))):
            if concept not in latest or taken > latest[concept][0]:
                latest[concept] = (taken, {
                    "kind": "lab", "id": f"lab:{concept}", "reference": reference_of(obs), "concept": concept,
                    "value": quantity["value"], "unit": quantity.get("unit") or quantity.get("code"),
                    "date": taken.isoformat(), "days_ago": _days_between(taken, as_of),
                })
    return [_compact(fact) for _, fact in latest.values()]


def _event_facts(kind: str, resources: list[dict], terminology: Terminology, as_of: date) -> list[dict]:
    """Procedures done and service requests (referrals, imaging) on record that a value set knows."""
    facts = []
    for resource in resources:
        value_sets = terminology.value_sets_of(codings(resource.get("code")))
        if not value_sets or resource.get("status") == "entered-in-error":
            continue
        when = parse_date(resource.get("performedDateTime") or resource.get("authoredOn")
                          or (resource.get("performedPeriod") or {}).get("start"))
        facts.append(_compact({
            "kind": kind, "id": reference_of(resource), "reference": reference_of(resource),
            "display": concept_text(resource.get("code")), "value_sets": value_sets,
            "status": resource.get("status"), "date": when and when.isoformat(),
            "days_ago": _days_between(when, as_of),
        }))
    return facts


def _trigger_facts(hook: str, context: dict, records: dict[str, list[dict]], terminology: Terminology) -> list[dict]:
    if hook == "patient-view":
        resources = [r for r in records.get("medicationRequests", []) if r.get("status") == "active"]
        origin = "active"
    else:
        resources = [e["resource"] for e in (context.get("draftOrders") or {}).get("entry", []) if "resource" in e]
        if hook == "order-select":
            selected = set(context.get("selections") or [])
            resources = [r for r in resources if reference_of(r) in selected]
        origin = "draft"
    return [_trigger_fact(resource, origin, terminology) for resource in resources]


def _trigger_fact(resource: dict, origin: str, terminology: Terminology) -> dict:
    concept = resource.get("medicationCodeableConcept") or resource.get("code")
    drug = terminology.drug_for(concept) if "medicationCodeableConcept" in resource else None
    dose = daily_dose_mg(resource.get("dosageInstruction") or [], drug.strength_mg) if drug else None
    return _compact({
        "kind": "trigger", "id": f"trigger:{reference_of(resource)}", "origin": origin,
        "reference": reference_of(resource), "resource_type": resource.get("resourceType"),
        "ingredient": drug and drug.ingredient, "drug_class": drug and drug.drug_class,
        "display": concept_text(concept) or resource.get("resourceType"),
        "value_sets": terminology.value_sets_of(codings(concept)), "daily_mg": dose and dose.mg,
    })


def _days_between(earlier: date | None, later: date) -> int | None:
    return (later - earlier).days if earlier else None


def _compact(fact: dict) -> dict:
    return {key: value for key, value in fact.items() if value is not None}
