"""FHIR R4 record -> normalized facts, the only thing rules see.

Facts are flat JSON objects with a ``kind``; ``FACT_FIELDS`` lists what each kind may
carry, and rule packs are checked against it at load time. A field that cannot be known is
absent (never null and never guessed), so a comparison on it does not match.

Context facts describe the patient's record, plus every draft order of this call
(``draft_order``, selected or not). Trigger facts are what the clinician is acting on: the
selected draft orders (order-select), all draft orders (order-sign) or the active
medication orders (patient-view), plus one trigger for the hook itself (origin "hook"), for
rules that fire on opening the chart. The engine asserts triggers after the context.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date

from cds_hooks.dosage import daily_dose_mg
from cds_hooks.exposures import exposure_facts, medication_concept, medication_records
from cds_hooks.fhir_read import codings, concept_text, known_only, parse_date, read_each, reference_of
from cds_hooks.terminology import Terminology

END_OF_FACTS = "end-of-facts"  # asserted last in every evaluation (engine.py)

FACT_FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(fields.split()) for kind, fields in {
        "patient": "id age gender",
        "condition": "id reference system code codes display value_sets onset days_since_onset",
        "medication": "id ingredient drug_class status course stop_reason dose_known start end days_on_therapy "
                      "max_daily_mg days_at_max current_daily_mg current_source dose_unknown_reason rxnorm_codes sources",
        "co_medication": "id ingredients drug_classes overlap_days ongoing",
        "lab": "id reference concept value unit date days_ago",
        "procedure": "id reference display value_sets status date days_ago",
        "service_request": "id reference display value_sets status date days_ago",
        "trigger": "id origin hook reference resource_type ingredient drug_class display value_sets daily_mg",
        "draft_order": "id reference resource_type ingredient drug_class display value_sets daily_mg",
        "assessment": "id label subject rule ingredient drug_class status",  # concluded by assessment rules
        END_OF_FACTS: "id",
    }.items()
}
TRIGGER_KINDS = frozenset({"trigger"})

_ACTIVE_CLINICAL = {None, "active", "recurrence", "relapse"}
_UNCONFIRMED = {"refuted", "entered-in-error"}
_RESULT_STATUSES = {"final", "amended", "corrected"}
# A procedure counts once done or under way; a service request while it stands (a draft of
# this very hook call included: it is being ordered now).
_STANDING = {"procedure": {"completed", "in-progress"},
             "service_request": {"draft", "active", "on-hold", "completed"}}


@dataclass(frozen=True)
class FactSet:
    context: list[dict]
    triggers: list[dict]


def build_facts(hook: str, context: dict, records: dict[str, list[dict]],
                terminology: Terminology, as_of: date) -> FactSet:
    medication_history = records.get("medicationStatements", []) + records.get("medicationRequests", [])
    medications = {reference_of(r): r for r in medication_history if r.get("resourceType") == "Medication"}
    history = medication_records(medication_history, medications, terminology, as_of)
    facts = (
        read_each(records.get("patient", []), lambda patient: _patient_fact(patient, as_of))
        + _condition_facts(records.get("conditions", []), terminology, as_of)
        + exposure_facts(history, terminology)
        + _lab_facts(records.get("observations", []), terminology, as_of)
        + _event_facts("procedure", records.get("procedures", []), terminology, as_of)
        + _event_facts("service_request", records.get("serviceRequests", []) + _draft_service_requests(context),
                       terminology, as_of)
    )
    drafts = _draft_orders(context, medications, terminology)
    as_context = [{**known_only({**d, "origin": None}), "kind": "draft_order", "id": f"draft:{d['reference']}"}
                  for d in drafts]
    return FactSet(context=facts + as_context, triggers=_triggers(hook, context, records, drafts, medications, terminology))


def _patient_fact(patient: dict, as_of: date) -> dict:
    born = _latest_birthday(patient.get("birthDate"))
    age = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day)) if born else None
    return known_only({"kind": "patient", "id": "patient", "age": age, "gender": patient.get("gender")})


def _latest_birthday(value: str | None) -> date | None:
    """The latest day a FHIR birthDate allows ("1950" -> 1950-12-31), so the age is never overstated."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", value):
        raise ValueError(f"birthDate {value!r} is not a FHIR date")
    if len(value) == 10:
        return parse_date(value)
    year, month = int(value[:4]), int(value[5:7]) if len(value) == 7 else 12
    return date(year, month, calendar.monthrange(year, month)[1])


def _condition_facts(conditions: list[dict], terminology: Terminology, as_of: date) -> list[dict]:
    def read(condition: dict) -> dict | None:
        clinical = next((c.get("code") for c in codings(condition.get("clinicalStatus"))), None)
        verification = next((c.get("code") for c in codings(condition.get("verificationStatus"))), None)
        if clinical not in _ACTIVE_CLINICAL or verification in _UNCONFIRMED:
            return None
        onset = parse_date(condition.get("onsetDateTime") or (condition.get("onsetPeriod") or {}).get("start")
                           or condition.get("recordedDate"))
        all_codings = codings(condition.get("code"))
        primary = next(iter(all_codings), {})
        return known_only({
            "kind": "condition", "id": reference_of(condition), "reference": reference_of(condition),
            "system": primary.get("system"), "code": primary.get("code"),
            "codes": [c["code"] for c in all_codings if c.get("code")],
            "display": concept_text(condition.get("code")), "value_sets": terminology.value_sets_of(all_codings),
            "onset": onset and onset.isoformat(), "days_since_onset": _days_between(onset, as_of),
        })
    return read_each(conditions, read)


def _lab_facts(observations: list[dict], terminology: Terminology, as_of: date) -> list[dict]:
    """The latest final result per lab value set; ``value`` only for numeric results."""
    def read(obs: dict) -> list[dict] | None:
        taken = parse_date(obs.get("effectiveDateTime") or obs.get("issued")
                           or (obs.get("effectivePeriod") or {}).get("start"))
        if obs.get("status") not in _RESULT_STATUSES or taken is None:
            return None
        quantity = obs.get("valueQuantity") or {}
        return [known_only({
            "kind": "lab", "id": f"lab:{concept}", "reference": reference_of(obs), "concept": concept,
            "value": quantity.get("value"), "unit": quantity.get("unit") or quantity.get("code"),
            "date": taken.isoformat(), "days_ago": _days_between(taken, as_of),
        }) for concept in terminology.value_sets_of(codings(obs.get("code")))]

    latest: dict[str, dict] = {}
    for fact in (fact for facts in read_each(observations, read) for fact in facts):
        if fact["concept"] not in latest or fact["date"] > latest[fact["concept"]]["date"]:
            latest[fact["concept"]] = fact
    return list(latest.values())


def _event_facts(kind: str, resources: list[dict], terminology: Terminology, as_of: date) -> list[dict]:
    """Procedures done and service requests (referrals, imaging) standing, that a value set knows."""
    def read(resource: dict) -> dict | None:
        value_sets = terminology.value_sets_of(codings(resource.get("code")))
        if not value_sets or resource.get("status") not in _STANDING[kind]:
            return None
        when = parse_date(resource.get("performedDateTime") or resource.get("authoredOn")
                          or (resource.get("performedPeriod") or {}).get("start"))
        return known_only({
            "kind": kind, "id": reference_of(resource), "reference": reference_of(resource),
            "display": concept_text(resource.get("code")), "value_sets": value_sets,
            "status": resource.get("status"), "date": when and when.isoformat(),
            "days_ago": _days_between(when, as_of),
        })
    return read_each(resources, read)


def _draft_resources(context: dict) -> list:
    """The resources of the call's draft orders (none for patient-view)."""
    return [entry.get("resource") for entry in (context.get("draftOrders") or {}).get("entry", [])]


def _draft_service_requests(context: dict) -> list[dict]:
    """ServiceRequests drafted in this call also count as ordered (an EMG signed with the MRI)."""
    return [r for r in _draft_resources(context) if isinstance(r, dict) and r.get("resourceType") == "ServiceRequest"]


def _draft_orders(context: dict, medications: dict[str, dict], terminology: Terminology) -> list[dict]:
    """Every draft order of the call, as trigger facts."""
    return read_each(_draft_resources(context),
                     lambda resource: _trigger_fact(resource, "draft", medications, terminology))


def _triggers(hook: str, context: dict, records: dict[str, list[dict]], drafts: list[dict],
              medications: dict[str, dict], terminology: Terminology) -> list[dict]:
    if hook == "patient-view":
        active = [r for r in records.get("medicationRequests", [])
                  if r.get("resourceType") == "MedicationRequest" and r.get("status") == "active"]
        orders = read_each(active, lambda resource: _trigger_fact(resource, "active", medications, terminology))
    elif hook == "order-select":
        orders = [d for d in drafts if d["reference"] in set(context["selections"])]
    else:
        orders = drafts
    return orders + [{"kind": "trigger", "id": "trigger:hook", "origin": "hook", "hook": hook}]


def _trigger_fact(resource: dict, origin: str, medications: dict[str, dict], terminology: Terminology) -> dict:
    is_medication = resource.get("resourceType") == "MedicationRequest"
    concept = medication_concept(resource, medications) if is_medication else resource.get("code")
    drug = terminology.drug_for(concept) if is_medication else None
    dose = daily_dose_mg(resource.get("dosageInstruction") or [], drug.strength_mg) if drug else None
    return known_only({
        "kind": "trigger", "id": f"trigger:{reference_of(resource)}", "origin": origin,
        "reference": reference_of(resource), "resource_type": resource.get("resourceType"),
        "ingredient": drug and drug.ingredient, "drug_class": drug and drug.drug_class,
        "display": concept_text(concept) or terminology.title_of(codings(concept)) or resource.get("resourceType"),
        "value_sets": terminology.value_sets_of(codings(concept)), "daily_mg": dose and dose.mg,
    })


def _days_between(earlier: date | None, later: date) -> int | None:
    return (later - earlier).days if earlier else None
