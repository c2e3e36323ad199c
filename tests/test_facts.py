"""FHIR R4 record -> facts: medication exposures, conditions, labs, events and triggers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from cds_hooks.facts import END_OF_FACTS, FACT_FIELDS, build_facts
from cds_hooks.terminology import load_terminology

REPO_ROOT = Path(__file__).resolve().parent.parent
TERMINOLOGY = load_terminology(REPO_ROOT / "rules")
AS_OF = date(2026, 11, 1)
PID = "pt-1"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
GABAPENTIN_300, GABAPENTIN_600, GABAPENTIN_800 = "310431", "310433", "310434"
DULOXETINE_30 = "596930"
OXYCODONE_5, TRAMADOL_50, LIDOCAINE_PATCH = "1049621", "835603", "1745091"
CONTEXT = {"userId": "Practitioner/u1", "patientId": PID}


# Builders ---------------------------------------------------------------------------------


def med_concept(code: str | None = None, display: str | None = None) -> dict:
    concept: dict = {}
    if code:
        concept["coding"] = [{"system": RXNORM, "code": code, **({"display": display} if display else {})}]
    if display:
        concept["text"] = display
    return concept


def dosage(dose_mg: float | None = None, per_day: int | None = None, start: str | None = None,
           end: str | None = None, tablets: float | None = None) -> dict:
    repeat: dict = {}
    if per_day:
        repeat.update(frequency=per_day, period=1, periodUnit="d")
    if start or end:
        repeat["boundsPeriod"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    result: dict = {"timing": {"repeat": repeat}} if repeat else {}
    if dose_mg is not None:
        result["doseAndRate"] = [{"doseQuantity": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}]
    elif tablets is not None:
        result["doseAndRate"] = [{"doseQuantity": {"value": tablets, "unit": "tablet", "system": UCUM, "code": "{tbl}"}}]
    return result


def med_request(rid: str, code: str | None, status: str, dose: dict, display: str | None = None,
                reason: str | None = None, intent: str = "order") -> dict:
    resource = {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": intent,
                "subject": {"reference": f"Patient/{PID}"}, "medicationCodeableConcept": med_concept(code, display),
                "dosageInstruction": [dose]}
    if reason:
        resource["statusReason"] = {"text": reason}
    return resource


def med_statement(sid: str, code: str, status: str, dose_mg: float | None, per_day: int | None,
                  start: str, end: str | None = None, reason: str | None = None, text: str | None = None) -> dict:
    given = dosage(dose_mg, per_day)
    if text:
        given["text"] = text
    resource = {"resourceType": "MedicationStatement", "id": sid, "status": status,
                "subject": {"reference": f"Patient/{PID}"}, "medicationCodeableConcept": med_concept(code),
                "effectivePeriod": {k: v for k, v in (("start", start), ("end", end)) if v},
                "dosage": [given]}
    if reason:
        resource["statusReason"] = [{"text": reason}]
    return resource


def condition(cid: str, system: str, code: str, clinical: str | None = "active",
              verification: str | None = "confirmed") -> dict:
    resource = {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{PID}"},
                "code": {"coding": [{"system": system, "code": code}]}, "onsetDateTime": "2025-09-10"}
    if clinical:
        resource["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]}
    return resource


def observation(oid: str, code: str, value: float, when: str, status: str = "final", unit: str = "%") -> dict:
    return {"resourceType": "Observation", "id": oid, "status": status, "subject": {"reference": f"Patient/{PID}"},
            "code": {"coding": [{"system": LOINC, "code": code}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def facts_of(records: dict[str, list[dict]], hook: str = "patient-view", context: dict | None = None,
             terminology=TERMINOLOGY):
    return build_facts(hook, context or CONTEXT, records, terminology, AS_OF)


def medications(records: dict[str, list[dict]]) -> dict[str, dict]:
    return {f["ingredient"]: f for f in facts_of(records).context if f["kind"] == "medication"}


def titration(intermediate_reason: str | None = "Dose increased for inadequate response") -> list[dict]:
    return [
        med_request("rx-1", GABAPENTIN_300, "completed", dosage(300, 3, "2026-08-01", "2026-08-14")),
        med_request("rx-2", GABAPENTIN_600, "stopped", dosage(600, 3, "2026-08-15", "2026-08-28"),
                    reason=intermediate_reason),
        med_request("rx-3", GABAPENTIN_800, "active", dosage(800, 3, "2026-08-29")),
    ]


# Medication exposures ---------------------------------------------------------------------


def test_titration_steps_merge_into_one_active_exposure():
    """300 TID (14 d) -> 600 TID (14 d) -> 800 TID (active) is one gabapentin trial, at 2400 mg/day."""
    facts = [f for f in facts_of({"medicationRequests": titration()}).context if f["kind"] == "medication"]
    assert len(facts) == 1
    [trial] = facts
    assert trial["ingredient"] == "gabapentin"
    assert trial["status"] == "active"
    assert trial["max_daily_mg"] == 2400
    assert trial["current_daily_mg"] == 2400
    # 08-01..08-14 (14) + 08-15..08-28 (14) + 08-29..11-01 (65), ends inclusive
    assert trial["days_on_therapy"] == 93
    assert trial["days_at_max"] == 65
    assert trial["start"] == "2026-08-01"
    assert "end" not in trial
    assert sorted(trial["sources"]) == ["MedicationRequest/rx-1", "MedicationRequest/rx-2", "MedicationRequest/rx-3"]


def test_titration_order_of_records_does_not_matter():
    """The merged exposure is the same whatever order the search returned the steps in."""
    forward = medications({"medicationRequests": titration()})["gabapentin"]
    backward = medications({"medicationRequests": titration()[::-1]})["gabapentin"]
    assert {k: v for k, v in forward.items() if k != "sources"} == {k: v for k, v in backward.items() if k != "sources"}


def test_gap_between_records_is_not_counted():
    """Two courses with a gap: days on therapy count only the covered days."""
    records = [med_request("rx-1", GABAPENTIN_300, "completed", dosage(300, 3, "2026-05-01", "2026-05-10")),
               med_request("rx-2", GABAPENTIN_300, "stopped", dosage(300, 3, "2026-06-01", "2026-06-10"),
                           reason="Ineffective")]
    assert medications({"medicationRequests": records})["gabapentin"]["days_on_therapy"] == 20


def test_statement_repeating_a_request_is_not_double_counted():
    """A MedicationStatement with the same period as a MedicationRequest adds no days."""
    request = med_request("rx-1", GABAPENTIN_300, "stopped", dosage(300, 3, "2026-05-04", "2026-06-12"),
                          reason="Ineffective")
    statement = med_statement("ms-1", GABAPENTIN_300, "stopped", 300, 3, "2026-05-04", "2026-06-12",
                              reason="Ineffective")
    trial = medications({"medicationRequests": [request], "medicationStatements": [statement]})["gabapentin"]
    assert trial["days_on_therapy"] == 40
    assert trial["days_at_max"] == 40
    assert trial["max_daily_mg"] == 900
    assert sorted(trial["sources"]) == ["MedicationRequest/rx-1", "MedicationStatement/ms-1"]


@pytest.mark.parametrize(("reason", "expected"), [
    ("Stopped due to dizziness (adverse effect)", "adverse-effect"),
    ("Ineffective", "ineffective"),
    ("No benefit after 8 weeks", "ineffective"),
    ("Ineffective, no side effects", "ineffective"),
    ("Not helping; denies dizziness or nausea", "ineffective"),
    ("No relief, then somnolence", "adverse-effect"),
    ("Weight gain and ankle swelling", "adverse-effect"),
    ("pt felt sleepy and foggy", "adverse-effect"),
    (None, "unknown"),
])
def test_stop_reason_from_request_status_reason(reason, expected):
    """MedicationRequest.statusReason text is read as adverse-effect / ineffective / unknown."""
    record = med_request("rx-1", GABAPENTIN_300, "stopped", dosage(300, 3, "2026-05-04", "2026-06-12"), reason=reason)
    trial = medications({"medicationRequests": [record]})["gabapentin"]
    assert trial["status"] == "stopped"
    assert trial["stop_reason"] == expected


@pytest.mark.parametrize(("reason", "expected"), [
    ("Stopped due to dizziness (adverse effect)", "adverse-effect"),
    ("Ineffective", "ineffective"),
    (None, "unknown"),
])
def test_stop_reason_from_statement_status_reason_list(reason, expected):
    """MedicationStatement.statusReason (a list) is read the same way."""
    record = med_statement("ms-1", DULOXETINE_30, "stopped", 30, 1, "2026-06-20", "2026-08-28", reason=reason)
    assert medications({"medicationStatements": [record]})["duloxetine"]["stop_reason"] == expected


def test_dose_adjustment_note_does_not_stop_an_active_trial():
    """An intermediate step 'stopped' for a dose increase leaves the trial active and not failed."""
    trial = medications({"medicationRequests": titration("Dose increased for inadequate response")})["gabapentin"]
    assert trial["status"] == "active"
    assert trial["stop_reason"] not in ("ineffective", "adverse-effect", "unknown")
    assert trial["course"] == "ongoing"


def test_stop_reason_is_the_last_records():
    """A trial ended by its last record takes that record's stop reason, not an earlier step's."""
    records = [
        med_request("rx-1", GABAPENTIN_300, "stopped", dosage(300, 3, "2026-05-01", "2026-05-14"),
                    reason="Dose adjustment: titrated up"),
        med_request("rx-2", GABAPENTIN_600, "stopped", dosage(600, 3, "2026-05-15", "2026-06-30"),
                    reason="Stopped: somnolence"),
    ]
    trial = medications({"medicationRequests": records})["gabapentin"]
    assert trial["status"] == "stopped" and trial["stop_reason"] == "adverse-effect"
    assert trial["end"] == "2026-06-30"


def test_text_only_dosage_means_dose_unknown():
    """A dosage given only as text has no daily dose: dose_known False, a reason, and no number."""
    record = med_statement("ms-1", GABAPENTIN_300, "stopped", None, None, "2026-05-04", "2026-06-12",
                           reason="Ineffective", text="Take as directed")
    trial = medications({"medicationStatements": [record]})["gabapentin"]
    assert trial["dose_known"] is False
    assert trial["dose_unknown_reason"]
    for guessed in ("max_daily_mg", "days_at_max", "current_daily_mg"):
        assert guessed not in trial
    assert trial["days_on_therapy"] == 40


def test_stopped_record_without_end_has_no_days_on_therapy():
    """A stopped record with no end date: days on therapy cannot be known and are left out."""
    record = med_statement("ms-1", GABAPENTIN_300, "stopped", 300, 3, "2026-05-04", None, reason="Ineffective")
    trial = medications({"medicationStatements": [record]})["gabapentin"]
    assert "days_on_therapy" not in trial
    assert "days_at_max" not in trial
    assert "end" not in trial
    assert trial["max_daily_mg"] == 900


def test_drug_identified_by_display_text_when_code_unknown():
    """An unknown RxNorm code with display 'Gabapentin 600mg tablet' is gabapentin, strength 600 from the text."""
    record = med_request("rx-1", "999999999", "stopped",
                         dosage(None, 3, "2026-05-01", "2026-06-30", tablets=1), display="Gabapentin 600mg tablet",
                         reason="Ineffective")
    trial = medications({"medicationRequests": [record]})["gabapentin"]
    assert trial["drug_class"] == "gabapentinoid"
    assert trial["max_daily_mg"] == 1800


@pytest.mark.parametrize("code", ["197517", "197653", "835829"])
def test_do_not_use_codes_are_not_gabapentin(code):
    """Codes listed as wrongly labelled gabapentin ('do not use') are not identified as gabapentin by code."""
    drug = TERMINOLOGY.drug_for({"coding": [{"system": RXNORM, "code": code}]})
    assert drug is None or drug.ingredient != "gabapentin"
    record = med_request("rx-1", code, "stopped", dosage(300, 3, "2026-05-01", "2026-06-30"), reason="Ineffective")
    assert "gabapentin" not in medications({"medicationRequests": [record]})


def test_combination_product_text_is_not_guessed():
    """A display naming two ingredients is ambiguous and identifies no drug."""
    assert TERMINOLOGY.drug_for({"text": "gabapentin / duloxetine combination pack"}) is None


def test_draft_and_unknown_status_records_are_not_history():
    """Draft, cancelled and entered-in-error requests are not part of the exposure history."""
    records = [med_request(f"rx-{s}", GABAPENTIN_300, s, dosage(300, 3, "2026-05-01", "2026-06-30"))
               for s in ("draft", "cancelled", "entered-in-error")]
    assert medications({"medicationRequests": records}) == {}


# Conditions -------------------------------------------------------------------------------


@pytest.mark.parametrize(("system", "code"), [(ICD10, "E11.42"), (SNOMED, "424736006"), (ICD10, "B02.29"),
                                              (SNOMED, "2177002")])
def test_condition_value_set_membership_by_icd10_and_snomed(system, code):
    """A condition coded in ICD-10-CM or SNOMED CT gets its pathway value set."""
    [fact] = [f for f in facts_of({"conditions": [condition("c1", system, code)]}).context if f["kind"] == "condition"]
    assert "peripheral-neuropathic-pain" in fact["value_sets"]
    assert fact["code"] == code and fact["system"] == system and fact["reference"] == "Condition/c1"
    assert fact["onset"] == "2025-09-10"


@pytest.mark.parametrize(("clinical", "verification"), [
    ("resolved", "confirmed"), ("inactive", "confirmed"), ("remission", "confirmed"),
    ("active", "refuted"), ("active", "entered-in-error"), (None, "entered-in-error"),
])
def test_condition_not_current_or_not_confirmed_is_excluded(clinical, verification):
    """Resolved/inactive, refuted and entered-in-error conditions make no fact."""
    record = condition("c1", ICD10, "E11.42", clinical, verification)
    assert [f for f in facts_of({"conditions": [record]}).context if f["kind"] == "condition"] == []


def test_condition_outside_every_value_set_is_kept_with_its_codes():
    """A condition no value set knows (e.g. a fracture) is still a fact, matchable by its codes."""
    record = condition("c1", ICD10, "S62.101A")
    [fact] = [f for f in facts_of({"conditions": [record]}).context if f["kind"] == "condition"]
    assert fact["codes"] == ["S62.101A"] and "value_sets" not in fact


# Labs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["oldest-first", "newest-first"])
def test_latest_final_hba1c_wins(reverse):
    """The latest final HbA1c is the lab fact; a newer preliminary one is ignored."""
    results = [observation("o-old", "4548-4", 8.2, "2026-03-01"),
               observation("o-new", "4548-4", 7.1, "2026-09-15"),
               observation("o-prelim", "4548-4", 9.9, "2026-10-20", status="preliminary")]
    labs = [f for f in facts_of({"observations": results[::-1] if reverse else results}).context if f["kind"] == "lab"]
    assert len(labs) == 1
    [hba1c] = labs
    assert hba1c["concept"] == "hba1c"
    assert hba1c["value"] == 7.1
    assert hba1c["date"] == "2026-09-15"
    assert hba1c["days_ago"] == 47
    assert hba1c["reference"] == "Observation/o-new"


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled", "entered-in-error"])
def test_non_final_lab_is_ignored(status):
    """A lab result that is not final (or amended/corrected) makes no lab fact."""
    facts = facts_of({"observations": [observation("o1", "4548-4", 7.1, "2026-09-15", status=status)]})
    assert [f for f in facts.context if f["kind"] == "lab"] == []


# Triggers ---------------------------------------------------------------------------------


def _drafts() -> dict:
    tramadol = med_request("draft-tram", TRAMADOL_50, "draft", dosage(None, 4, tablets=1))
    patch = med_request("draft-patch", LIDOCAINE_PATCH, "draft", dosage(None, 1, tablets=1))
    return {"resourceType": "Bundle", "entry": [{"resource": tramadol}, {"resource": patch}]}


def test_order_select_triggers_only_the_selected_drafts():
    """order-select: only drafts named in selections are triggers."""
    context = {**CONTEXT, "draftOrders": _drafts(), "selections": ["MedicationRequest/draft-tram"]}
    triggers = order_triggers(facts_of({}, "order-select", context))
    assert [t["reference"] for t in triggers] == ["MedicationRequest/draft-tram"]
    [tramadol] = triggers
    assert tramadol["origin"] == "draft"
    assert tramadol["ingredient"] == "tramadol" and tramadol["drug_class"] == "tramadol"
    assert tramadol["daily_mg"] == 200


def test_order_sign_triggers_every_draft():
    """order-sign: every draft order is a trigger."""
    context = {**CONTEXT, "draftOrders": _drafts()}
    triggers = order_triggers(facts_of({}, "order-sign", context))
    assert sorted(t["reference"] for t in triggers) == ["MedicationRequest/draft-patch", "MedicationRequest/draft-tram"]
    assert {t["origin"] for t in triggers} == {"draft"}


def test_patient_view_triggers_the_active_medication_requests():
    """patient-view: the active MedicationRequests of the record are triggers, with origin 'active'."""
    records = {"medicationRequests": [
        med_request("rx-oxy", OXYCODONE_5, "active", dosage(None, 4, "2026-10-01", tablets=1)),
        med_request("rx-gaba", GABAPENTIN_300, "stopped", dosage(300, 3, "2026-05-01", "2026-06-30")),
        med_request("rx-plan", TRAMADOL_50, "draft", dosage(None, 4, tablets=1)),
    ]}
    triggers = order_triggers(facts_of(records, "patient-view"))
    assert [t["reference"] for t in triggers] == ["MedicationRequest/rx-oxy"]
    assert triggers[0]["origin"] == "active"
    assert triggers[0]["drug_class"] == "strong-opioid"


def test_every_hook_adds_one_hook_trigger_last():
    """Each call adds a trigger for the hook itself, after the order triggers, for chart-open rules."""
    for hook, context in [("patient-view", CONTEXT), ("order-sign", {**CONTEXT, "draftOrders": _drafts()})]:
        triggers = facts_of({}, hook, context).triggers
        assert triggers[-1] == {"kind": "trigger", "id": "trigger:hook", "origin": "hook", "hook": hook}
        assert [t for t in triggers if t["origin"] == "hook"] == [triggers[-1]]


def order_triggers(facts) -> list[dict]:
    return [t for t in facts.triggers if t["origin"] != "hook"]


def test_triggers_are_not_context_facts():
    """Draft orders are triggers only: they never appear among the record's medication exposures."""
    context = {**CONTEXT, "draftOrders": _drafts(), "selections": ["MedicationRequest/draft-tram"]}
    facts = facts_of({}, "order-select", context)
    assert [f for f in facts.context if f["kind"] == "medication"] == []
    assert all(f["kind"] == "trigger" for f in facts.triggers)


# Fact shape -------------------------------------------------------------------------------


def _fixture_facts():
    for folder in sorted((REPO_ROOT / "fhir_fixtures").iterdir()):
        if not (folder / "request.json").exists():
            continue
        request = json.loads((folder / "request.json").read_text())
        records = {}
        for key, value in (request.get("prefetch") or {}).items():
            if value and value.get("resourceType") == "Bundle":
                records[key] = [e["resource"] for e in value.get("entry", [])
                                if e["resource"]["resourceType"] != "OperationOutcome"]
            else:
                records[key] = [value] if value else []
        yield folder.name, build_facts(request["hook"], request["context"], records, TERMINOLOGY, AS_OF)


def _rich_record_facts():
    events = replace(TERMINOLOGY, value_sets={**TERMINOLOGY.value_sets,
                                              "nerve-block": frozenset({("urn:test", "nerve-block")})})
    code = {"coding": [{"system": "urn:test", "code": "nerve-block"}]}
    records = {
        "patient": [{"resourceType": "Patient", "id": PID, "birthDate": "1960-02-29", "gender": "female"}],
        "conditions": [condition("c1", ICD10, "E11.42")],
        "medicationRequests": titration(),
        "medicationStatements": [med_statement("ms-1", DULOXETINE_30, "stopped", None, None, "2026-08-20", "2026-09-30")],
        "observations": [observation("o1", "4548-4", 7.1, "2026-09-15")],
        "procedures": [{"resourceType": "Procedure", "id": "p1", "status": "completed", "code": code,
                        "subject": {"reference": f"Patient/{PID}"}, "performedDateTime": "2026-04-01"}],
        "serviceRequests": [{"resourceType": "ServiceRequest", "id": "s1", "status": "active", "intent": "order",
                             "code": code, "subject": {"reference": f"Patient/{PID}"}, "authoredOn": "2026-10-01"}],
    }
    context = {**CONTEXT, "draftOrders": _drafts(), "selections": ["MedicationRequest/draft-tram"]}
    return build_facts("order-select", context, records, events, AS_OF)


def test_drugs_of_different_classes_taken_together_make_a_co_medication_fact():
    """Gabapentin (from 2026-08-01, ongoing) and duloxetine (2026-09-01 to 2026-09-30) overlap 30 days."""
    records = {"medicationRequests": titration(),
               "medicationStatements": [med_statement("ms-d", DULOXETINE_30, "stopped", 30, 1, "2026-09-01", "2026-09-30")]}
    [pair] = [f for f in facts_of(records).context if f["kind"] == "co_medication"]
    assert pair["ingredients"] == ["gabapentin", "duloxetine"]
    assert pair["drug_classes"] == ["gabapentinoid", "snri"]
    assert pair["overlap_days"] == 30


def test_drugs_taken_one_after_the_other_are_not_a_combination():
    """Duloxetine stopped the day before gabapentin started: no co_medication fact."""
    records = {"medicationRequests": titration(),
               "medicationStatements": [med_statement("ms-d", DULOXETINE_30, "stopped", 30, 1, "2026-06-01", "2026-07-31")]}
    assert not [f for f in facts_of(records).context if f["kind"] == "co_medication"]


def test_rich_record_yields_every_fact_kind():
    """The record used for the shape check produces every kind FACT_FIELDS declares but the engine's own."""
    facts = _rich_record_facts()
    engine_made = {"assessment", END_OF_FACTS}
    assert {f["kind"] for f in facts.context + facts.triggers} == set(FACT_FIELDS) - engine_made


@pytest.mark.parametrize("case", ["rich-record", *(name for name, _ in _fixture_facts())])
def test_facts_use_only_declared_fields_and_no_nulls(case):
    """Every fact carries only the fields FACT_FIELDS declares for its kind, and none of them is null."""
    facts = _rich_record_facts() if case == "rich-record" else dict(_fixture_facts())[case]
    for fact in facts.context + facts.triggers:
        assert fact["kind"] in FACT_FIELDS, fact
        undeclared = set(fact) - FACT_FIELDS[fact["kind"]] - {"kind"}
        assert not undeclared, (fact["kind"], undeclared)
        assert all(value is not None for value in fact.values()), fact
        assert fact["id"], fact
