"""Assessment rules conclude `assessment` facts about the record that card rules then match, per evaluation."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds_hooks.engine import RulesEngine
from cds_hooks.facts import FactSet, build_facts
from cds_hooks.terminology import load_terminology
from rule_factories import RULES, condition, copy_rules, gabapentin, load_dir, medication, trigger, write_yaml

SOURCE = {"label": "test", "url": "https://example.org"}
ORDER = {"fact": "trigger", "as": "order", "where": {"origin": "draft"}}


def rule(rule_id: str, when: list, **section) -> dict:
    return {"id": rule_id, "version": "1.0.0", "status": "active", "hooks": ["order-select"],
            "description": rule_id, "when": when, **section}


def card(one_per: str | None = None) -> dict:
    spec = {"indicator": "info", "summary": "s", "detail": "d", "source": SOURCE}
    return {"card": {**spec, "one_per": one_per} if one_per else spec}


ASSESSMENT_RULES = [
    rule("long-trial", [{"fact": "medication", "as": "trial", "where": {"days_on_therapy": {"gte": 56}}}],
         assess={"label": "long-trial", "subject": "trial"}),
    rule("long-trial-seen", [{"fact": "assessment", "as": "judged", "where": {"label": "long-trial"}}, ORDER],
         **card("judged")),
    rule("no-long-trial", [ORDER, {"none": {"fact": "assessment", "where": {"label": "long-trial"}}}], **card()),
    rule("adequate-seen", [{"fact": "assessment", "as": "tried", "where": {"label": "adequate-trial"}}, ORDER],
         **card("tried")),
]
FAMILIES = {"long-trial", "long-trial-seen", "no-long-trial", "adequate-seen", "first-line-adequate-trial"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> RulesEngine:
    rules_dir = copy_rules(tmp_path_factory.mktemp("assessments"))
    write_yaml(rules_dir / "packs" / "test-assessments.yaml",
               {"pack": "test-assessments", "title": "t", "rules": ASSESSMENT_RULES})
    return RulesEngine([r for r in load_dir(rules_dir) if r.family in FAMILIES])


def findings(engine: RulesEngine, context: list[dict]) -> dict[str, list]:
    result: dict[str, list] = {}
    for finding in engine.evaluate("order-select", FactSet(context, [trigger()])):
        result.setdefault(finding.rule.id, []).append(finding)
    return result


LONG = gabapentin(days_on_therapy=60)
SHORT_DULOXETINE = medication("MedicationStatement/dlx", "duloxetine", "snri", days_on_therapy=20)


def test_assessment_is_visible_to_a_card_rule_in_the_same_evaluation(engine):
    """A card rule matching `fact: assessment` with the label fires on the assessment of that evaluation."""
    found = findings(engine, [condition(), LONG])
    assert len(found.get("long-trial-seen", [])) == 1
    judged = found["long-trial-seen"][0].first("judged")
    assert {key: judged[key] for key in ("label", "subject", "rule", "ingredient", "drug_class")} == {
        "label": "long-trial", "subject": LONG["id"], "rule": "long-trial",
        "ingredient": "gabapentin", "drug_class": "gabapentinoid"}


def test_assessment_concerns_only_its_subject(engine):
    """With a long and a short trial on record, only the long trial is assessed."""
    found = findings(engine, [LONG, SHORT_DULOXETINE])
    assert [f.first("judged")["subject"] for f in found["long-trial-seen"]] == [LONG["id"]]


def test_one_assessment_per_subject(engine):
    """Two long trials give two assessments, one card finding each."""
    long_duloxetine = {**SHORT_DULOXETINE, "days_on_therapy": 90}
    found = findings(engine, [LONG, long_duloxetine])
    assert sorted(f.first("judged")["subject"] for f in found["long-trial-seen"]) == sorted(
        [LONG["id"], long_duloxetine["id"]])


def test_assessment_does_not_leak_to_the_next_patient(engine):
    """Patient A's assessment (same medication fact id) is gone when patient B, with a short trial, is evaluated."""
    patient_a = [condition("Condition/a"), LONG]
    patient_b = [condition("Condition/b"), gabapentin(days_on_therapy=20)]  # same id "MedicationStatement/gaba"
    assert "long-trial-seen" in findings(engine, patient_a)
    found_b = findings(engine, patient_b)
    assert "long-trial-seen" not in found_b
    assert "no-long-trial" in found_b
    assert engine.live_sessions() == 0


@pytest.mark.parametrize("record, blocked", [
    ([condition(), LONG], True),
    ([condition(), SHORT_DULOXETINE], False),
    ([condition()], False),
], ids=["assessed", "not-assessed", "no-medication"])
def test_none_assessment_pattern(engine, record, blocked):
    """`none: {fact: assessment}` is blocked when the assessment exists and fires when it does not."""
    assert ("no-long-trial" not in findings(engine, record)) is blocked


def adequate(engine: RulesEngine, trial: dict) -> list[dict]:
    """The adequate-trial assessments the card rule saw for this record."""
    return [f.first("tried") for f in findings(engine, [condition(), trial]).get("adequate-seen", [])]


@pytest.mark.parametrize("days_at_max, expected", [(30, True), (10, False)], ids=["30-days-at-max", "10-days-at-max"])
def test_shipped_adequate_trial_gabapentin(engine, days_at_max, expected):
    """The shipped gabapentin adequate-trial assessment needs 14 days at max: 2400 x 60 with 30 is adequate, 10 not."""
    trial = gabapentin(max_daily_mg=2400, days_on_therapy=60, days_at_max=days_at_max)
    tried = adequate(engine, trial)
    if expected:
        assert [(t["subject"], t["rule"], t["ingredient"]) for t in tried] == [
            (trial["id"], "first-line-adequate-trial.gabapentin", "gabapentin")]
    else:
        assert tried == []


AS_OF = date(2026, 11, 1)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def statement(sid: str, code: str, dose_mg: int, start: date, days: int) -> dict:
    """A completed gabapentin MedicationStatement, three times daily, over ``days`` calendar days."""
    return {"resourceType": "MedicationStatement", "id": sid, "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
            "effectivePeriod": {"start": start.isoformat(), "end": (start + timedelta(days=days - 1)).isoformat()},
            "statusReason": [{"text": "ineffective"}],
            "dosage": [{"timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                        "doseAndRate": [{"doseQuantity": {"value": dose_mg, "unit": "mg",
                                                          "system": "http://unitsofmeasure.org", "code": "mg"}}]}]}


@pytest.mark.parametrize("days_at_1200, days_at_2400, expected", [(30, 30, True), (50, 10, False)],
                         ids=["30-days-at-2400", "10-days-at-2400"])
def test_shipped_adequate_trial_from_fhir_statements(engine, days_at_1200, days_at_2400, expected):
    """From FHIR statements, 1200 then 2400 mg/day over 60 days is adequate with 30 days at 2400, not with 10."""
    start = date(2026, 3, 1)
    statements = [statement("gaba-1200", "310432", 400, start, days_at_1200),
                  statement("gaba-2400", "310434", 800, start + timedelta(days=days_at_1200), days_at_2400)]
    context = build_facts("order-select", {"draftOrders": {"entry": []}, "selections": []},
                          {"medicationStatements": statements}, load_terminology(RULES), AS_OF).context
    trial = next(fact for fact in context if fact["kind"] == "medication")
    assert (trial["max_daily_mg"], trial["days_on_therapy"], trial["days_at_max"]) == (2400, 60, days_at_2400)
    assert bool(adequate(engine, trial)) is expected
