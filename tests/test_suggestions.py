"""Suggestion builders turn a finding into valid FHIR R4 actions, and offer nothing when nothing is safe."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_hooks.cards import render_card
from cds_hooks.engine import Finding, RulesEngine
from cds_hooks.facts import FactSet
from cds_hooks.protocol import Card
from cds_hooks.suggestions import SUGGESTION_BUILDERS, SuggestionInput, check_order
from cds_hooks.terminology import RXNORM, load_terminology
from rule_factories import RULES, condition, gabapentin, medication, shipped_rules, trigger

TERMINOLOGY = load_terminology(RULES)
PATIENT = "pt-42"
GABAPENTIN_STEPS = {"gabapentin": [
    {"daily_mg": 900, "rxnorm": "310431", "dose_mg": 300, "times_per_day": 3},
    {"daily_mg": 1200, "rxnorm": "310432", "dose_mg": 400, "times_per_day": 3},
    {"daily_mg": 1800, "rxnorm": "310433", "dose_mg": 600, "times_per_day": 3},
    {"daily_mg": 2400, "rxnorm": "310434", "dose_mg": 800, "times_per_day": 3},
]}
DRAFT = {"kind": "trigger", "id": "trigger:MedicationRequest/oxy", "origin": "draft",
         "reference": "MedicationRequest/oxy", "display": "oxycodone 5 MG Oral Tablet"}
ACTIVE = {**DRAFT, "id": "trigger:MedicationRequest/old", "origin": "active", "reference": "MedicationRequest/old"}
HOOK = {"kind": "trigger", "id": "trigger:hook", "origin": "hook", "hook": "patient-view"}


def given(subject: dict | None = None, triggers: list[dict] | None = None, order=None, **parameters) -> SuggestionInput:
    return SuggestionInput(subject=subject or {}, triggers=triggers or [], parameters=parameters,
                           patient_id=PATIENT, terminology=TERMINOLOGY, order=order)


def build(kind: str, inputs: SuggestionInput) -> list[dict]:
    return SUGGESTION_BUILDERS[kind].build(inputs)


def created(action: dict) -> dict:
    """The action's resource, validated with fhir.resources R4B and checked to be for the patient."""
    assert action["type"] == "create"
    resource = action["resource"]
    model = {"MedicationRequest": MedicationRequest, "ServiceRequest": ServiceRequest}[resource["resourceType"]]
    model.model_validate(resource)
    assert resource["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert resource["status"] == "draft" and resource["intent"] == "order"
    return resource


def rxnorm_of(resource: dict) -> str:
    coding = resource["medicationCodeableConcept"]["coding"][0]
    assert coding["system"] == RXNORM
    return coding["code"]


# --- titrate-medication ---------------------------------------------------------------------------

@pytest.mark.parametrize("trial, rxnorm", [
    (gabapentin(status="active", max_daily_mg=1800, current_daily_mg=900), "310432"),  # from the current dose
    (gabapentin(status="active", max_daily_mg=1200, current_daily_mg=1200), "310433"),
    (gabapentin(status="active", max_daily_mg=1000, current_daily_mg=1000), "310432"),  # between steps
], ids=["active-reduced", "active-at-a-step", "active-between"])
def test_titrate_running_drug_moves_to_the_first_step_above_its_current_dose(trial, rxnorm):
    """For a running drug: stop its current order and order the first step above its current dose, in one suggestion."""
    actions = build("titrate-medication", given({**trial, "current_source": "MedicationRequest/gaba-now"},
                                                titration_steps=GABAPENTIN_STEPS))
    assert len(actions) == 2
    assert actions[0] == {"type": "delete", "resourceId": "MedicationRequest/gaba-now",
                          "description": f"Stop the current gabapentin order ({trial['current_daily_mg']} mg/day)"}
    resource = created(actions[1])
    assert rxnorm_of(resource) == rxnorm
    step = next(s for s in GABAPENTIN_STEPS["gabapentin"] if s["rxnorm"] == rxnorm)
    dosage = resource["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == step["dose_mg"]
    assert dosage["timing"]["repeat"]["frequency"] == 3
    assert f"({step['daily_mg']} mg/day)" in dosage["text"]


@pytest.mark.parametrize("max_daily_mg", [600, 900, 1800, 3600])
def test_titrate_stopped_drug_restarts_at_the_first_step(max_daily_mg):
    """A stopped drug is re-titrated from the first step, never restarted at or above where it stopped."""
    trial = gabapentin(status="stopped", max_daily_mg=max_daily_mg)
    [action] = build("titrate-medication", given(trial, titration_steps=GABAPENTIN_STEPS, target_daily_mg=1800))
    dosage = created(action)["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 300
    assert dosage["text"] == "Restart: 300 mg by mouth 3 times daily (900 mg/day), then titrate toward ≥1800 mg/day as tolerated"


def test_titrate_offers_nothing_when_the_running_order_is_not_a_request():
    """A running drug known only from a MedicationStatement gets no one-click order: it could double the drug."""
    trial = gabapentin(status="active", current_daily_mg=900, current_source="MedicationStatement/gaba-list")
    assert build("titrate-medication", given(trial, titration_steps=GABAPENTIN_STEPS)) == []


@pytest.mark.parametrize("trial", [
    gabapentin(status="active", max_daily_mg=2400, current_daily_mg=2400),
    gabapentin(status="active", max_daily_mg=3600, current_daily_mg=3600),
    {key: value for key, value in gabapentin(status="active").items() if key != "current_daily_mg"},
    medication("MedicationStatement/nor", "desipramine", "tca", max_daily_mg=10),
], ids=["active-at-last-step", "active-above-last-step", "current-dose-unknown", "no-steps-for-ingredient"])
def test_titrate_offers_nothing_without_a_step_to_take(trial):
    """No action at or above the last step, without a known current dose, or without steps for the drug."""
    assert build("titrate-medication", given(trial, titration_steps=GABAPENTIN_STEPS)) == []


def test_titrate_at_bedtime_step():
    """A step with `when: [HS]` creates a bedtime MedicationRequest."""
    steps = {"amitriptyline": [{"daily_mg": 25, "rxnorm": "856834", "dose_mg": 25, "times_per_day": 1, "when": ["HS"]}]}
    trial = medication("MedicationStatement/ami", "amitriptyline", "tca", status="active", current_daily_mg=10,
                       current_source="MedicationRequest/ami-now")
    resource = created(build("titrate-medication", given(trial, titration_steps=steps))[1])
    dosage = resource["dosageInstruction"][0]
    assert dosage["timing"]["repeat"]["when"] == ["HS"]
    assert dosage["text"] == "25 mg by mouth at bedtime (25 mg/day)"


# --- order ------------------------------------------------------------------------------------------

def test_order_medication_with_dose():
    """`order` with dose_mg builds a valid R4 MedicationRequest with timing, dose and the pack's text."""
    spec = {"rxnorm": "596930", "dose_mg": 30, "times_per_day": 1, "text": "30 mg once daily for 1 week"}
    [action] = build("order", given(order=spec))
    resource = created(action)
    assert rxnorm_of(resource) == "596930"
    assert resource["medicationCodeableConcept"]["text"] == "duloxetine 30 MG Delayed Release Oral Capsule"
    dosage = resource["dosageInstruction"][0]
    assert dosage["text"] == "30 mg once daily for 1 week"
    assert dosage["timing"]["repeat"] == {"frequency": 1, "period": 1, "periodUnit": "d"}
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"value": 30, "unit": "mg",
                                                        "system": "http://unitsofmeasure.org", "code": "mg"}
    assert action["description"] == "Order duloxetine 30 MG Delayed Release Oral Capsule"


def test_order_text_only_patch():
    """`order` without dose_mg (a patch) builds a valid MedicationRequest whose dosage is text only."""
    spec = {"rxnorm": "1039679", "text": "Apply up to 4 patches for 60 minutes"}
    resource = created(build("order", given(order=spec))[0])
    assert rxnorm_of(resource) == "1039679"
    assert resource["dosageInstruction"] == [{"text": "Apply up to 4 patches for 60 minutes"}]


def test_order_coded_service_request():
    """`order` with system/code/display builds a valid coded R4 ServiceRequest."""
    spec = {"system": "http://loinc.org", "code": "2132-9", "display": "Cobalamin [Mass/volume] in Serum",
            "text": "Vitamin B12, serum"}
    resource = created(build("order", given(order=spec))[0])
    assert resource["resourceType"] == "ServiceRequest"
    assert resource["code"] == {"coding": [{"system": "http://loinc.org", "code": "2132-9",
                                            "display": "Cobalamin [Mass/volume] in Serum"}],
                                "text": "Vitamin B12, serum"}


def test_order_text_only_service_request():
    """`order` with text alone builds a valid ServiceRequest with no coding."""
    resource = created(build("order", given(order={"text": "EMG and nerve conduction studies"}))[0])
    assert resource["resourceType"] == "ServiceRequest"
    assert resource["code"] == {"text": "EMG and nerve conduction studies"}


def test_order_service_request_display_as_text():
    """A coded service order without text reads its display as the code text."""
    spec = {"system": "http://snomed.info/sct", "code": "306265007", "display": "Referral to pain management specialist"}
    resource = created(build("order", given(order=spec))[0])
    assert resource["code"]["text"] == "Referral to pain management specialist"


# --- order-for-subject-class ------------------------------------------------------------------------

PARTNERS = {
    "gabapentinoid": {"rxnorm": "596930", "dose_mg": 30, "times_per_day": 1},
    "snri": {"rxnorm": "310431", "dose_mg": 300, "times_per_day": 1, "when": ["HS"]},
}


@pytest.mark.parametrize("subject, rxnorm", [
    (gabapentin(status="active"), "596930"),
    (medication("MedicationStatement/dlx", "duloxetine", "snri", status="active"), "310431"),
    ({"kind": "assessment", "id": "assessment:adequate-trial:x", "label": "adequate-trial", "subject": "x",
      "ingredient": "venlafaxine", "drug_class": "snri", "status": "active"}, "310431"),
], ids=["gabapentinoid", "snri", "assessment-subject"])
def test_order_for_subject_class_picks_by_drug_class(subject, rxnorm):
    """order-for-subject-class orders what is listed for the running subject's drug class."""
    [action] = build("order-for-subject-class", given(subject, order=PARTNERS))
    assert rxnorm_of(created(action)) == rxnorm


def test_order_for_subject_class_offers_nothing_to_add_to_a_stopped_drug():
    """Adding a partner to a drug no longer taken would be a switch, not a combination: no suggestion."""
    assert build("order-for-subject-class", given(gabapentin(status="stopped"), order=PARTNERS)) == []


@pytest.mark.parametrize("subject", [medication("MedicationStatement/ami", "amitriptyline", "tca"),
                                     condition()], ids=["unlisted-class", "no-class"])
def test_order_for_subject_class_unlisted_gives_nothing(subject):
    """order-for-subject-class returns no action for a class the mapping does not list (or no class)."""
    assert build("order-for-subject-class", given(subject, order=PARTNERS)) == []


# --- remove / replace trigger orders -----------------------------------------------------------------

REPLACEMENT = {"system": "http://loinc.org", "code": "30866-8", "display": "MR Lumbosacral plexus",
               "text": "MRI lumbosacral plexus without and with IV contrast"}


def test_remove_trigger_order_deletes_only_drafts():
    """remove-trigger-order deletes each draft trigger and never an active order or the hook."""
    second = {**DRAFT, "id": "trigger:MedicationRequest/mor", "reference": "MedicationRequest/mor", "display": "morphine"}
    actions = build("remove-trigger-order", given(triggers=[ACTIVE, DRAFT, HOOK, second]))
    assert [(a["type"], a["resourceId"]) for a in actions] == [("delete", "MedicationRequest/oxy"),
                                                               ("delete", "MedicationRequest/mor")]
    assert actions[0]["description"] == "Remove the draft order for oxycodone 5 MG Oral Tablet"


@pytest.mark.parametrize("kind", ["remove-trigger-order", "replace-trigger-order"])
@pytest.mark.parametrize("triggers", [[ACTIVE], [HOOK], [ACTIVE, HOOK], []], ids=["active", "hook", "both", "none"])
def test_no_action_without_a_draft_trigger(kind, triggers):
    """remove- and replace-trigger-order offer nothing when no trigger is a draft (active, hook, or none)."""
    assert build(kind, given(triggers=triggers, order=REPLACEMENT)) == []


def test_replace_trigger_order_deletes_and_creates():
    """replace-trigger-order deletes the draft trigger and creates the replacement, in one action list."""
    actions = build("replace-trigger-order", given(triggers=[ACTIVE, DRAFT, HOOK], order=REPLACEMENT))
    assert [a["type"] for a in actions] == ["delete", "create"]
    assert actions[0]["resourceId"] == "MedicationRequest/oxy"
    assert created(actions[1])["code"]["coding"][0]["code"] == "30866-8"


def test_replace_is_one_suggestion_on_the_rendered_card():
    """The shipped plexopathy-mri-protocol card offers the replacement as ONE suggestion: delete + create."""
    rule = next(r for r in shipped_rules() if r.id == "plexopathy-mri-protocol")
    diagnosis = {"kind": "condition", "id": "Condition/g541", "display": "Lesion of lumbosacral plexus",
                 "value_sets": ["lumbosacral-plexopathy"]}
    order = {**DRAFT, "id": "trigger:ServiceRequest/mri", "reference": "ServiceRequest/mri",
             "resource_type": "ServiceRequest", "display": "MRI pelvis", "value_sets": ["mri-pelvis"]}
    card = render_card(Finding(rule, {"diagnosis": [diagnosis], "order": [order]}), PATIENT, TERMINOLOGY)
    Card.model_validate(card)
    [suggestion] = card["suggestions"]
    assert [a["type"] for a in suggestion["actions"]] == ["delete", "create"]
    assert suggestion["actions"][0]["resourceId"] == "ServiceRequest/mri"
    assert created(suggestion["actions"][1])["code"]["coding"][0]["code"] == "30866-8"


# --- check_order -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [None, "310431", ["310431"], 5], ids=["none", "string", "list", "number"])
def test_check_order_rejects_a_non_mapping(spec):
    """check_order rejects an order that is not a mapping."""
    with pytest.raises(ValueError, match="an order is a mapping"):
        check_order(spec, TERMINOLOGY)


@pytest.mark.parametrize("spec, missing", [
    ({}, "display"),
    ({"system": "http://loinc.org", "code": "2132-9"}, "display"),
    ({"rxnorm": "310431", "dose_mg": 300}, "times_per_day"),
    ({"rxnorm": "310431"}, "times_per_day"),
    ({"rxnorm": "999999", "text": "x"}, "999999"),
], ids=["empty", "service-without-text-or-display", "dose-without-frequency", "no-dose-no-text", "unknown-rxnorm"])
def test_check_order_rejects_missing_keys(spec, missing):
    """check_order rejects an order missing what its resource needs, naming the key (or unknown code)."""
    with pytest.raises(ValueError, match="is not a valid FHIR R4 order") as error:
        check_order(spec, TERMINOLOGY)
    assert missing in str(error.value)


@pytest.mark.parametrize("spec", [
    {"rxnorm": "310431", "dose_mg": 300, "times_per_day": 3},
    {"rxnorm": "1745091", "text": "Apply one patch for 12 hours"},
    {"text": "EMG"},
    {"system": "http://loinc.org", "code": "2132-9", "display": "B12"},
], ids=["medication", "patch", "text-service", "coded-service"])
def test_check_order_accepts_valid_orders(spec):
    """check_order accepts medication and service orders that build valid resources."""
    check_order(spec, TERMINOLOGY)


def test_check_order_rejects_invalid_fhir():
    """check_order rejects an order whose resource fails R4 validation (a dose that is not a number)."""
    with pytest.raises(ValueError, match="is not a valid FHIR R4 order"):
        check_order({"rxnorm": "310431", "dose_mg": "three hundred", "times_per_day": 3}, TERMINOLOGY)


# --- the shipped combination card --------------------------------------------------------------------

def test_combination_card_offers_the_partner_drug():
    """After an adequate gabapentin trial still running, the combination card suggests adding duloxetine."""
    rules = [r for r in shipped_rules() if r.family in ("first-line-adequate-trial", "first-line-combination-not-tried")]
    trial = gabapentin(status="active", max_daily_mg=2400, days_at_max=30, days_on_therapy=60)
    findings = RulesEngine(rules).evaluate("order-select", FactSet([condition(), trial], [trigger()]))
    [finding] = [f for f in findings if f.rule.id == "first-line-combination-not-tried"]
    card = render_card(finding, PATIENT, TERMINOLOGY)
    creates = [a for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "create"]
    assert [rxnorm_of(created(a)) for a in creates] == ["596930"]


def test_an_order_for_a_patient_id_that_is_not_a_fhir_id_is_refused():
    """Suggested resources are validated per call: a malformed patient id is refused, not sent."""
    spec = {"rxnorm": "596930", "dose_mg": 30, "times_per_day": 1}
    bad = SuggestionInput(subject={}, triggers=[], parameters={}, patient_id="not a valid id!", terminology=TERMINOLOGY,
                          order=spec)
    with pytest.raises(ValueError, match="not a FHIR id"):
        build("order", bad)


def test_an_invalid_order_is_refused_every_time():
    """An order the R4B models reject is refused on every call, not only the first (validation is cached by content)."""
    spec = {"rxnorm": "596930", "dose_mg": "thirty", "times_per_day": 1}
    for _ in range(2):
        with pytest.raises(Exception):
            build("order", given(order=spec))
