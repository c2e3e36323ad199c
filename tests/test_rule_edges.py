"""Rule behaviour at the edges of the record that the fixture corpus does not spell out."""

import copy
from datetime import date

import pytest

from cds_hooks import pipeline
from cds_hooks.fixtures import FIXTURES_DIR, fired_rule_ids, load_fixture
from cds_hooks.runtime import load_runtime
from cds_hooks.services import SERVICES
from cds_hooks.settings import Settings

HEADLINE = load_fixture(FIXTURES_DIR / "order-select-gabapentin-900-duloxetine-30-oxycodone")
B12_ORDER = {"resourceType": "ServiceRequest", "id": "b12-order", "status": "active", "intent": "order",
             "subject": {"reference": "Patient/np-pt-1001"},
             "code": {"coding": [{"system": "http://loinc.org", "code": "2132-9"}]}}


@pytest.fixture(scope="module")
def runtime():
    runtime = load_runtime(Settings(), with_store=False)
    yield runtime
    runtime.close()


def fired(runtime, request: dict) -> list[str]:
    parsed = pipeline.parse_request(request, SERVICES[HEADLINE.service_id])
    return fired_rule_ids(pipeline.answer(runtime, parsed, date(2026, 11, 1)))


@pytest.mark.parametrize("order, fires", [
    (None, True),
    ({}, False),
    ({"authoredOn": "2025-06-19"}, True),
    ({"authoredOn": "2026-10-02"}, False),
    ({"authoredOn": "2026-10-02", "status": "revoked"}, True),
], ids=["no-order", "undated-order", "order-500-days-ago", "order-30-days-ago", "revoked-order"])
def test_b12_card_and_b12_orders(runtime, order, fires):
    """Without a B12 result, a standing B12 order within the window (or undated) silences the card; an old or
    revoked one does not."""
    request = copy.deepcopy(HEADLINE.request)
    labs = request["prefetch"]["observations"]
    labs["entry"] = [e for e in labs["entry"] if e["resource"]["code"]["coding"][0]["code"] != "2132-9"]
    if order is not None:
        request["prefetch"]["serviceRequests"] = {"resourceType": "Bundle", "type": "searchset",
                                                  "entry": [{"resource": {**B12_ORDER, **order}}]}
    assert ("vitamin-b12-not-checked" in fired(runtime, request)) is fires


@pytest.mark.parametrize("egfr, taken, fires", [(75, "2026-10-20", True), (45, "2026-10-20", False),
                                                (45, "2023-10-20", True)], ids=["normal", "reduced", "reduced-but-stale"])
def test_gabapentin_target_is_not_pushed_when_kidney_function_is_reduced(runtime, egfr, taken, fires):
    """Below eGFR 60 (within a year) the gabapentin target exceeds the renal maximum: no inadequate-trial card."""
    request = copy.deepcopy(HEADLINE.request)
    labs = request["prefetch"]["observations"]
    labs["entry"] = [e for e in labs["entry"] if e["resource"]["code"]["coding"][0]["code"] not in ("62238-1", "98979-8")]
    labs["entry"].append({"resource": {
        "resourceType": "Observation", "id": "egfr-latest", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "98979-8"}]},
        "subject": {"reference": "Patient/np-pt-1001"}, "effectiveDateTime": taken,
        "valueQuantity": {"value": egfr, "unit": "mL/min/{1.73_m2}"}}})
    assert ("first-line-inadequate-trial.gabapentin" in fired(runtime, request)) is fires


@pytest.mark.parametrize("loinc, fires", [("30674-6", True), ("30679-5", True), ("30866-8", False)])
def test_plexus_mri_card_replaces_pelvis_and_lumbar_spine_mri_not_the_plexus_study(runtime, loinc, fires):
    """A pelvis or lumbar spine MRI for plexopathy is replaced by the plexus study; the plexus study itself is left alone."""
    case = load_fixture(FIXTURES_DIR / "plexopathy-order-select-mri-pelvis-standard-protocol")
    request = copy.deepcopy(case.request)
    for entry in request["context"]["draftOrders"]["entry"]:
        entry["resource"]["code"] = {"coding": [{"system": "http://loinc.org", "code": loinc}], "text": "MRI"}
    parsed = pipeline.parse_request(request, SERVICES[case.service_id])
    rule_ids = fired_rule_ids(pipeline.answer(runtime, parsed, case.as_of))
    assert ("plexopathy-mri-protocol" in rule_ids) is fires


def test_a_first_line_drug_ordered_with_the_opioid_counts(runtime):
    """An opioid signed together with a first-line drug is not 'an opioid with no first-line drug'."""
    case = load_fixture(FIXTURES_DIR / "pnp-strong-opioid-no-first-line-hydrocodone")
    request = copy.deepcopy(case.request)
    parsed = pipeline.parse_request(request, SERVICES[case.service_id])
    assert "strong-opioid-without-first-line-trial" in fired_rule_ids(pipeline.answer(runtime, parsed, case.as_of))
    gabapentin = {"resourceType": "MedicationRequest", "id": "draft-gaba", "status": "draft", "intent": "order",
                  "subject": request["context"]["draftOrders"]["entry"][0]["resource"]["subject"],
                  "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                            "code": "310431"}]}}
    request["context"]["draftOrders"]["entry"].append({"resource": gabapentin})
    parsed = pipeline.parse_request(request, SERVICES[case.service_id])
    assert "strong-opioid-without-first-line-trial" not in fired_rule_ids(pipeline.answer(runtime, parsed, case.as_of))
