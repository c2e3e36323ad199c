"""Daily dose in mg from FHIR R4 ``Dosage`` elements.

``daily_dose_mg`` turns ``MedicationRequest.dosageInstruction`` or
``MedicationStatement.dosage`` (plain JSON dicts) into milligrams per day:
dose per administration (mg, g, mcg, or a tablet/capsule count times the product
strength) times administrations per day (from ``timing.repeat`` or ``timing.code``).
It never guesses: anything missing or ambiguous gives ``mg=None`` and a reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DailyDose", "daily_dose_mg", "strength_mg_from_text"]

UCUM = "http://unitsofmeasure.org"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"

_MG_PER_UNIT = {"mg": 1.0, "milligram": 1.0, "milligrams": 1.0, "g": 1000.0, "gram": 1000.0,
                "grams": 1000.0, "mcg": 0.001, "ug": 0.001, "µg": 0.001, "microgram": 0.001}
_COUNT_UNITS = {"", "1", "{tbl}", "{tablet}", "{capsule}", "{cap}", "tablet", "tablets",
                "tab", "tabs", "capsule", "capsules", "cap", "caps"}
_DAYS_PER_PERIOD_UNIT = {"h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.4375}  # UCUM mean month
_PER_DAY_BY_CODE = {"QD": 1, "QDAY": 1, "DAILY": 1, "BID": 2, "TID": 3, "QID": 4, "AM": 1,
                    "PM": 1, "HS": 1, "QHS": 1, "BED": 1, "Q1H": 24, "Q2H": 12, "Q3H": 8,
                    "Q4H": 6, "Q6H": 4, "Q8H": 3, "Q12H": 2, "QOD": 0.5, "WK": 1 / 7}
# One administration each; the generic meal codes (AC, C, PC) are left out on purpose:
# "with meals" does not say how many meals.
_SPECIFIC_EVENTS = frozenset(
    "MORN MORN.early MORN.late NOON AFT AFT.early AFT.late EVE EVE.early EVE.late NIGHT "
    "PHS HS WAKE CM CD CV ACM ACD ACV PCM PCD PCV".split())
# "<n> mg", capturing a leading range dash/separator ("300-600 mg", "1,200 mg") and a
# trailing slash ("0.08 MG/MG", "10 MG/ML"): either means it is not a plain strength.
_MG_MENTION = re.compile(r"([-–/,]?)(?<![\w.])(\d+(?:\.\d+)?)\s*mg\b(\s*/)?", re.IGNORECASE)


@dataclass(frozen=True)
class DailyDose:
    mg: float | None  # None when unknown
    unknown_reason: str | None = None  # set iff mg is None


class _Unknown(Exception):
    """Raised internally with the reason the daily dose cannot be known."""


def daily_dose_mg(dosages: list[dict], strength_mg: float | None) -> DailyDose:
    """Sum the concurrent Dosage elements of the last phase, in mg per day."""
    try:
        total = sum(_dose_mg(d, strength_mg) * _administrations_per_day(d)
                    for d in _last_phase(dosages))
    except _Unknown as unknown:
        return DailyDose(mg=None, unknown_reason=str(unknown))
    return DailyDose(mg=round(total, 1))


def strength_mg_from_text(text: str | None) -> float | None:
    """The single "<n> MG" strength in a drug name; None for combinations or concentrations."""
    mentions = _MG_MENTION.findall(text or "")
    if len(mentions) != 1:
        return None
    before, number, after = mentions[0]
    return None if before or after else float(number)


def _last_phase(dosages: list[dict]) -> list[dict]:
    if not dosages:
        raise _Unknown("no dosage given")
    sequences = {d.get("sequence") for d in dosages}
    if len(sequences) == 1:
        return dosages
    if None in sequences:
        raise _Unknown("some dosage elements have a sequence number and some do not")
    last = max(sequences)
    return [d for d in dosages if d.get("sequence") == last]


def _dose_mg(dosage: dict, strength_mg: float | None) -> float:
    dose_and_rate = (dosage.get("doseAndRate") or [{}])[0]
    if "doseRange" in dose_and_rate:
        raise _Unknown("dose is a range")
    quantity = dose_and_rate.get("doseQuantity")
    if not quantity or not isinstance(quantity.get("value"), (int, float)):
        raise _Unknown("no dose quantity given")
    unit = _unit(quantity)
    if unit in _MG_PER_UNIT:
        return quantity["value"] * _MG_PER_UNIT[unit]
    if unit in _COUNT_UNITS:
        if strength_mg is None:
            raise _Unknown("dose is a tablet/capsule count and the product strength is unknown")
        return quantity["value"] * strength_mg
    raise _Unknown(f"dose unit {unit!r} cannot be converted to mg")


def _unit(quantity: dict) -> str:
    # A UCUM code is authoritative; other code systems (e.g. SNOMED forms) fall back to the text.
    if quantity.get("code") and quantity.get("system", UCUM) == UCUM:
        return quantity["code"].strip().lower()
    return (quantity.get("unit") or "").strip().lower()


def _administrations_per_day(dosage: dict) -> float:
    if (dosage.get("asNeeded") or dosage.get("asNeededBoolean")
            or "asNeededCodeableConcept" in dosage):
        # Even with maxDosePerPeriod: a ceiling is not what the patient actually takes.
        raise _Unknown("as-needed dosing has no fixed daily dose")
    timing = dosage.get("timing")
    if not timing:
        raise _Unknown("no timing given")
    repeat = timing.get("repeat") or {}
    per_day = _per_day_from_repeat(repeat)
    if per_day is None:
        per_day = _per_day_from_code(timing.get("code"))
    if repeat.get("dayOfWeek"):
        if repeat.get("periodUnit") in ("wk", "mo"):
            raise _Unknown("dayOfWeek combined with a weekly or monthly period is ambiguous")
        per_day *= len(set(repeat["dayOfWeek"])) / 7
    return per_day


def _per_day_from_repeat(repeat: dict) -> float | None:
    """Administrations per day, or None when the repeat carries no count at all."""
    if "frequencyMax" in repeat or "periodMax" in repeat:
        raise _Unknown("timing gives a range of frequencies (frequencyMax/periodMax)")
    if "period" in repeat:
        days = _DAYS_PER_PERIOD_UNIT.get(repeat.get("periodUnit"))
        if days is None or not repeat["period"]:
            raise _Unknown(f"timing period {repeat['period']} {repeat.get('periodUnit')!r} "
                           "is not usable")
        return repeat.get("frequency", 1) / (repeat["period"] * days)
    if "frequency" in repeat:
        raise _Unknown("timing frequency given without a period")
    when, time_of_day = repeat.get("when"), repeat.get("timeOfDay")
    if when and time_of_day:
        raise _Unknown("timing gives both when and timeOfDay")
    if time_of_day:
        return float(len(set(time_of_day)))
    if when:
        vague = [event for event in when if event not in _SPECIFIC_EVENTS]
        if vague:
            raise _Unknown(f"timing event {vague[0]!r} does not say how many times a day")
        return float(len(set(when)))
    return None


def _per_day_from_code(code: dict | None) -> float:
    if not code:
        raise _Unknown("no timing (frequency) given")
    candidates = [c.get("code") for c in code.get("coding", []) if c.get("system", GTS) == GTS]
    for candidate in [*candidates, code.get("text")]:
        key = re.sub(r"[.\s]", "", candidate or "").upper()
        if key in _PER_DAY_BY_CODE:
            return float(_PER_DAY_BY_CODE[key])
    raise _Unknown(f"timing code {code.get('text') or candidates} is not a known frequency")
