"""Medication exposures: MedicationStatement and MedicationRequest history, one trial per ingredient.

Titration is usually recorded as several requests (300 mg TID, then 600 mg TID...), and a
statement may repeat what a request says; all records of one ingredient merge into one
exposure. Days on therapy count the union of the records' periods, so overlaps are not
counted twice and gaps are not counted at all. Anything that cannot be known (a stopped
record without an end date, a dose that cannot be computed) is left out rather than guessed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from cds_hooks.dosage import daily_dose_mg
from cds_hooks.fhir_read import codeable_texts, known_only, parse_date, read_each, reference_of
from cds_hooks.terminology import Drug, Terminology

_STATUS = {"active": "active", "on-hold": "active", "completed": "stopped", "stopped": "stopped"}
_COURSE = {"ineffective": "stopped as ineffective", "adverse-effect": "stopped for an adverse effect",
           "unknown": "stopped, reason not recorded"}


@dataclass(frozen=True)
class MedicationRecord:
    """One MedicationStatement or MedicationRequest, read."""

    reference: str
    drug: Drug
    status: str  # active | stopped
    start: date | None
    end: date | None  # for an active record: the evaluation date at the latest
    daily_mg: float | None
    dose_unknown_reason: str | None
    stop_texts: list[str]


def medication_records(resources: list[dict], medications: dict[str, dict], terminology: Terminology,
                       as_of: date) -> list[MedicationRecord]:
    """Read every MedicationStatement / MedicationRequest whose drug the drug table knows.

    ``medications`` (Medication resources by reference, e.g. from a search with ``_include``)
    resolve ``medicationReference``.
    """
    def read(resource: dict) -> MedicationRecord | None:
        if resource.get("resourceType") not in ("MedicationStatement", "MedicationRequest"):
            return None
        status = _STATUS.get(resource.get("status", ""))
        drug = terminology.drug_for(medication_concept(resource, medications))
        record = _read_record(resource, drug, status, as_of) if status and drug else None
        return None if record and record.start and record.start > as_of else record  # not begun yet
    return read_each(resources, read)


def exposure_facts(records: list[MedicationRecord], terminology: Terminology) -> list[dict]:
    """One ``medication`` fact per ingredient, then one ``co_medication`` fact per pair of
    ingredients of different classes taken at the same time (combination therapy)."""
    by_ingredient: dict[str, list[MedicationRecord]] = defaultdict(list)
    for record in records:
        by_ingredient[record.drug.ingredient].append(record)
    groups = sorted(by_ingredient.items())
    exposures = [_exposure(ingredient, group, terminology) for ingredient, group in groups]
    pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:] if a[1][0].drug.drug_class != b[1][0].drug.drug_class]
    return exposures + [fact for a, b in pairs if (fact := _co_medication(a, b))]


def _co_medication(a: tuple[str, list[MedicationRecord]], b: tuple[str, list[MedicationRecord]]) -> dict | None:
    spans_a, spans_b = _spans(a[1]), _spans(b[1])
    if spans_a is None or spans_b is None:
        return None
    overlap = sum(max(0, (min(end_a, end_b) - max(start_a, start_b)).days)
                  for start_a, end_a in spans_a for start_b, end_b in spans_b)
    if overlap == 0:
        return None
    (first, first_records), (second, second_records) = sorted([a, b], key=lambda pair: pair[1][0].drug.drug_class)
    return {"kind": "co_medication", "id": f"co_medication:{first}+{second}", "ingredients": [first, second],
            "drug_classes": [first_records[0].drug.drug_class, second_records[0].drug.drug_class],
            "overlap_days": overlap,
            "ongoing": all(any(r.status == "active" for r in group) for group in (first_records, second_records))}


def _read_record(resource: dict, drug: Drug, status: str, as_of: date) -> MedicationRecord:
    dosages = resource.get("dosageInstruction") or resource.get("dosage") or []
    start, end = _period(resource, dosages)
    if status == "active":
        end = min(end or as_of, as_of)
    elif end:
        end = min(end, as_of)
    dose = daily_dose_mg(dosages, drug.strength_mg)
    reasons = resource.get("statusReason") or []
    return MedicationRecord(
        reference=reference_of(resource), drug=drug, status=status, start=start, end=end,
        daily_mg=dose.mg, dose_unknown_reason=dose.unknown_reason,
        stop_texts=codeable_texts(reasons if isinstance(reasons, list) else [reasons]),
    )


def medication_concept(resource: dict, medications: dict[str, dict]) -> dict | None:
    """The drug's CodeableConcept: inline, or from a contained or included Medication."""
    if "medicationCodeableConcept" in resource:
        return resource["medicationCodeableConcept"]
    ref = (resource.get("medicationReference") or {}).get("reference", "")
    contained = {f"#{r.get('id')}": r for r in resource.get("contained", [])}
    return (contained.get(ref) or medications.get(ref) or {}).get("code")


def _period(resource: dict, dosages: list[dict]) -> tuple[date | None, date | None]:
    """Start and end of a record: effectivePeriod, else the dosage bounds. A prescription's
    dispense validity is not used: it says how long it may be filled, not how long it was taken."""
    bounds = next((d.get("timing", {}).get("repeat", {}).get("boundsPeriod") for d in dosages
                   if d.get("timing", {}).get("repeat", {}).get("boundsPeriod")), None)
    period = resource.get("effectivePeriod") or bounds or {}
    start = (parse_date(period.get("start")) or parse_date(resource.get("effectiveDateTime"))
             or parse_date(resource.get("authoredOn")))
    return start, parse_date(period.get("end"))


def _exposure(ingredient: str, records: list[MedicationRecord], terminology: Terminology) -> dict:
    records = sorted(records, key=lambda r: (r.end or date.max, r.start or date.min))
    last = records[-1]
    active = any(r.status == "active" for r in records)
    stop_reason = "not-stopped" if active else terminology.stop_reason(last.stop_texts)
    known_doses = [r.daily_mg for r in records if r.daily_mg is not None]
    max_mg = max(known_doses, default=None)
    fact = {
        "kind": "medication", "id": f"medication:{ingredient}", "ingredient": ingredient,
        "drug_class": last.drug.drug_class, "status": "active" if active else "stopped",
        "course": "ongoing" if active else _COURSE[stop_reason], "stop_reason": stop_reason,
        "dose_known": len(known_doses) == len(records),
        "start": _iso(min((r.start for r in records if r.start), default=None)),
        "end": None if active else _iso(last.end),
        "days_on_therapy": _days_covered(records),
        "max_daily_mg": max_mg,
        "days_at_max": _days_covered([r for r in records if r.daily_mg == max_mg]) if max_mg else None,
        "current_daily_mg": last.daily_mg if active else None,
        "current_source": last.reference if active else None,
        "dose_unknown_reason": next((r.dose_unknown_reason for r in records if r.dose_unknown_reason), None),
        "rxnorm_codes": sorted({r.drug.rxnorm for r in records if r.drug.rxnorm}),
        "sources": [r.reference for r in records],
    }
    return known_only(fact)


def _days_covered(records: list[MedicationRecord]) -> int | None:
    """Days covered by the union of the records' periods; None when a period is open-ended."""
    spans = _spans(records)
    return None if spans is None else sum((end - start).days for start, end in spans)


def _spans(records: list[MedicationRecord]) -> list[tuple[date, date]] | None:
    """The union of the records' periods as disjoint [start, end) spans (FHIR period ends are
    inclusive); None when any period has no start or, for a stopped record, no end."""
    if any(r.start is None or r.end is None for r in records):
        return None
    spans: list[tuple[date, date]] = []
    for record in sorted(records, key=lambda r: r.start):
        start, end = record.start, record.end + timedelta(days=1)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None
