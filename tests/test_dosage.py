"""Daily dose in mg from FHIR R4 Dosage elements, as EHRs actually send them."""

import pytest

from cds_hooks.dosage import DailyDose, daily_dose_mg, strength_mg_from_text

UCUM = "http://unitsofmeasure.org"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
LOCAL_FREQUENCIES = "urn:oid:1.2.840.114350.1.13.0.1.7.4.698288.300"  # an EHR's own frequency list


def mg(value: float) -> dict:
    return {"value": value, "unit": "mg", "system": UCUM, "code": "mg"}


KNOWN = [
    pytest.param(
        [{"text": "300 mg by mouth three times daily",
          "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
          "route": {"text": "oral"},
          "doseAndRate": [{"type": {"text": "ordered"}, "doseQuantity": mg(300)}]}],
        None, 900.0, id="300mg-tid-frequency-period"),
    pytest.param(
        [{"text": "1 capsule TID",
          "timing": {"code": {"coding": [{"system": GTS, "code": "TID"}], "text": "TID"}},
          "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "capsule", "system": UCUM,
                                            "code": "{capsule}"}}]}],
        300.0, 900.0, id="1-capsule-timing-code-tid-x-strength"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 1, "period": 8, "periodUnit": "h"}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, 900.0, id="q8h-frequency-1-period-8h"),
    pytest.param(
        [{"timing": {"repeat": {"when": ["MORN", "HS"]}},
          "doseAndRate": [{"doseQuantity": mg(150)}]}],
        None, 300.0, id="when-morning-and-bedtime"),
    pytest.param(
        [{"sequence": 1, "text": "300 mg in the morning",
          "timing": {"repeat": {"when": ["MORN"]}}, "doseAndRate": [{"doseQuantity": mg(300)}]},
         {"sequence": 1, "text": "600 mg at bedtime",
          "timing": {"repeat": {"when": ["HS"]}}, "doseAndRate": [{"doseQuantity": mg(600)}]}],
        None, 900.0, id="concurrent-elements-300-morn-plus-600-hs"),
    pytest.param(
        [{"sequence": 2, "text": "then 300 mg three times daily",
          "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d",
                                "boundsDuration": {"value": 4, "unit": "wk", "code": "wk"}}},
          "doseAndRate": [{"doseQuantity": mg(300)}]},
         {"sequence": 1, "text": "300 mg at bedtime for 3 days",
          "timing": {"repeat": {"when": ["HS"],
                                "boundsDuration": {"value": 3, "unit": "d", "code": "d"}}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, 900.0, id="titration-phases-use-last-sequence"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
          "doseAndRate": [{"doseQuantity": {"value": 0.6, "unit": "g", "system": UCUM,
                                            "code": "g"}}]}],
        None, 1200.0, id="0.6-g-bid-converted-to-mg"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
          "doseAndRate": [{"doseQuantity": {"value": 500, "unit": "mcg", "system": UCUM,
                                            "code": "ug"}}]}],
        None, 0.5, id="micrograms-converted-to-mg"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk"}},
          "doseAndRate": [{"doseQuantity": mg(70)}]}],
        None, 10.0, id="once-weekly-averaged-per-day"),
    pytest.param(
        [{"timing": {"repeat": {"timeOfDay": ["08:00:00", "20:00:00"]}},
          "doseAndRate": [{"doseQuantity": mg(75)}]}],
        None, 150.0, id="time-of-day-twice"),
    pytest.param(
        [{"timing": {"repeat": {"boundsPeriod": {"start": "2024-03-01"}},
                     "code": {"coding": [{"system": GTS, "code": "BID"}]}},
          "doseAndRate": [{"doseQuantity": mg(150)}]}],
        None, 300.0, id="repeat-with-bounds-only-falls-back-to-code"),
    pytest.param(
        [{"timing": {"code": {"text": "b.i.d."}},
          "doseAndRate": [{"doseQuantity": {"value": 2, "unit": "tablets"}}]}],
        25.0, 100.0, id="code-text-only-and-unit-text-tablets"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d",
                                "when": ["HS"]}},
          "doseAndRate": [{"doseQuantity": {"value": 1}}]}],
        25.0, 25.0, id="frequency-wins-over-when-and-unitless-count"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d",
                                "dayOfWeek": ["mon", "wed", "fri", "sun", "tue", "thu", "sat"]}},
          "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet", "system":
                                            "http://snomed.info/sct", "code": "732936001"}}]}],
        50.0, 50.0, id="snomed-tablet-unit-every-day-of-week"),
]


@pytest.mark.parametrize(("dosages", "strength", "expected"), KNOWN)
def test_daily_dose_is_computed(dosages, strength, expected):
    """A fully specified dosage gives mg per day and no reason."""
    assert daily_dose_mg(dosages, strength) == DailyDose(mg=expected, unknown_reason=None)


UNKNOWN = [
    pytest.param([], None, "no dosage", id="empty-list"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
          "doseAndRate": [{"doseRange": {"low": mg(300), "high": mg(600)}}]}],
        None, "range", id="dose-range"),
    pytest.param(
        [{"asNeededBoolean": True,
          "timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
          "doseAndRate": [{"doseQuantity": mg(50)}]}],
        None, "as-needed", id="prn-boolean"),
    pytest.param(
        [{"asNeededCodeableConcept": {"text": "pain"},
          "timing": {"repeat": {"frequency": 1, "period": 6, "periodUnit": "h"}},
          "maxDosePerPeriod": {"numerator": mg(400), "denominator": {"value": 1, "unit": "d",
                                                                    "code": "d"}},
          "doseAndRate": [{"doseQuantity": mg(50)}]}],
        None, "as-needed", id="prn-with-max-dose-per-period"),
    pytest.param(
        [{"timing": {"code": {"coding": [{"system": GTS, "code": "TID"}]}},
          "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet", "system": UCUM,
                                            "code": "{tbl}"}}]}],
        None, "strength", id="tablet-count-without-strength"),
    pytest.param(
        [{"text": "1-2 times a day",
          "timing": {"repeat": {"frequency": 1, "frequencyMax": 2, "period": 1,
                                "periodUnit": "d"}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "frequencyMax", id="frequency-max"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 1, "period": 4, "periodMax": 6, "periodUnit": "h"}},
          "doseAndRate": [{"doseQuantity": mg(50)}]}],
        None, "periodMax", id="period-max"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
          "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mL", "system": UCUM,
                                            "code": "mL"}}]}],
        50.0, "ml", id="millilitre-unit"),
    pytest.param(
        [{"text": "take as directed", "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "no timing", id="no-timing"),
    pytest.param(
        [{"timing": {"repeat": {"boundsPeriod": {"start": "2024-03-01"}}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "no timing", id="timing-without-any-count"),
    pytest.param(
        [{"timing": {"code": {"coding": [{"system": LOCAL_FREQUENCIES,
                                          "code": "1042"}], "text": "Every 5 hours"}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "Every 5 hours", id="unknown-timing-code"),
    pytest.param(
        [{"timing": {"code": {"coding": [{"system": LOCAL_FREQUENCIES,
                                          "code": "Q4H"}], "text": "Every 4 hours while awake"}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "while awake", id="local-code-that-looks-like-gts-is-not-read-as-gts"),
    pytest.param(
        [{"timing": {"repeat": {"when": ["C"]}}, "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "'C'", id="with-meals-does-not-say-how-many"),
    pytest.param(
        [{"timing": {"repeat": {"frequency": 3}}, "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "without a period", id="frequency-without-period"),
    pytest.param(
        [{"timing": {"code": {"text": "TID"}}}],
        None, "dose quantity", id="no-dose-quantity"),
    pytest.param(
        [{"sequence": 1, "timing": {"code": {"text": "HS"}},
          "doseAndRate": [{"doseQuantity": mg(300)}]},
         {"timing": {"code": {"text": "TID"}}, "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "sequence", id="sequence-on-some-elements-only"),
    pytest.param(
        [{"timing": {"code": {"text": "TID"}}, "doseAndRate": [{"doseQuantity": mg(300)}]},
         {"asNeededBoolean": True, "timing": {"code": {"text": "QD"}},
          "doseAndRate": [{"doseQuantity": mg(300)}]}],
        None, "as-needed", id="one-unknown-element-makes-the-sum-unknown"),
]


@pytest.mark.parametrize(("dosages", "strength", "reason_part"), UNKNOWN)
def test_daily_dose_is_unknown(dosages, strength, reason_part):
    """Missing or ambiguous data gives no dose and a reason naming the problem."""
    result = daily_dose_mg(dosages, strength)
    assert result.mg is None
    assert result.unknown_reason
    assert reason_part.lower() in result.unknown_reason.lower()


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("gabapentin 300 MG Oral Capsule", 300.0, id="rxnorm-scd"),
    pytest.param("24 HR venlafaxine 75 MG Extended Release Oral Capsule", 75.0, id="24hr-prefix"),
    pytest.param("amitriptyline hydrochloride 25 MG Oral Tablet", 25.0, id="salt-name"),
    pytest.param("gabapentin 300 MG Oral Capsule [Neurontin]", 300.0, id="branded"),
    pytest.param("Gabapentin 600mg tablet", 600.0, id="free-text-lowercase-no-space"),
    pytest.param("pregabalin 12.5 mg capsule", 12.5, id="decimal"),
    pytest.param("acetaminophen 325 MG / hydrocodone bitartrate 5 MG Oral Tablet", None,
                 id="combination"),
    pytest.param("HYDROcodone-acetaminophen 5 mg-325 mg tablet", None, id="combination-dash"),
    pytest.param("capsaicin 0.08 MG/MG Medicated Patch", None, id="concentration"),
    pytest.param("morphine sulfate 10 MG/ML Oral Solution", None, id="per-ml"),
    pytest.param("gabapentin 300-600 mg", None, id="range"),
    pytest.param("gabapentin 1,200 mg daily", None, id="thousands-separator"),
    pytest.param("gabapentin oral capsule", None, id="no-strength"),
    pytest.param(None, None, id="none"),
])
def test_strength_mg_from_text(text, expected):
    """Only a single plain "<n> MG" strength is read from a drug name."""
    assert strength_mg_from_text(text) == expected
