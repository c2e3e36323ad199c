"""The durable_rules adapter guards the library's hazards (design.md, "durable_rules: known hazards")."""

import dataclasses
import logging
import resource
import sys
import threading

import pytest
from durable.engine import Host, MessageNotHandledException

from cds_hooks.cards import render_cards
from cds_hooks.engine import RulesEngine
from cds_hooks.facts import FactSet
from cds_hooks.rulebook import RulePackError
from cds_hooks.terminology import load_terminology
from rule_factories import (GABAPENTIN, NOT_TOLERATED, RULES, condition, copy_rules, engine_survives_no_match,
                            first_line_rules, gabapentin, load_dir, medication, snri_pack, trigger, write_yaml)

LAB = {"kind": "lab", "id": "lab:hba1c", "reference": "Observation/a1c", "concept": "hba1c", "value": 6.4, "unit": "%"}


@pytest.fixture(scope="module")
def engine() -> RulesEngine:
    return RulesEngine(first_line_rules())


@pytest.fixture(scope="module")
def snri_engine(tmp_path_factory) -> RulesEngine:
    rules_dir = copy_rules(tmp_path_factory.mktemp("snri"))
    write_yaml(rules_dir / "packs" / "test.yaml", snri_pack())
    return RulesEngine([r for r in load_dir(rules_dir) if r.family in ("opioid-without-snri", "order-seen")])


def ids(findings) -> list[str]:
    return sorted(f.rule.id for f in findings)


def test_first_evaluation_that_fires_nothing_returns():
    """A fresh engine's first evaluation, firing no rule, returns (run in a child process: it may crash)."""
    assert engine_survives_no_match()


def warm_up(engine: RulesEngine, hook: str) -> None:
    """Fire a rule once in this hook's ruleset, so later sessions reuse a state slot the library has initialised
    (see test_first_evaluation_that_fires_nothing_returns)."""
    assert engine.evaluate(hook, patient(0))


def patient(n: int) -> FactSet:
    """Even patients fire the gabapentin rule at max 300+n mg/day; odd ones only first-line-not-tolerated."""
    trial = (gabapentin(f"MedicationStatement/gaba-{n}", max_daily_mg=300 + n) if n % 2 == 0 else
             medication(f"MedicationStatement/pgb-{n}", "pregabalin", "gabapentinoid", stop_reason="adverse-effect"))
    return FactSet([condition(f"Condition/pnp-{n}"), trial], [trigger(f"trigger:MedicationRequest/opioid-{n}")])


@pytest.fixture
def busy_switching():
    """Make threads switch every microsecond, so they really interleave inside evaluate."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_concurrent_evaluations_keep_patients_apart(engine, busy_switching):
    """16 threads x 50 evaluations on one engine, one at a time: each result holds only its own patient's facts."""
    problems, live, start = [], set(), threading.Barrier(16)

    def run(n: int) -> None:
        start.wait()
        for _ in range(50):
            findings = engine.evaluate("order-select", patient(n))
            live.add(engine.live_sessions())  # seen from outside the lock: 0, or 1 for another thread's session
            expected = [GABAPENTIN] if n % 2 == 0 else [NOT_TOLERATED]
            bound = [f["id"] for finding in findings for facts in finding.bindings.values() for f in facts]
            if ids(findings) != expected or any(not i.endswith(f"-{n}") for i in bound):
                problems.append((n, ids(findings), bound))
            elif n % 2 == 0 and findings[0].first("trial")["max_daily_mg"] != 300 + n:
                problems.append((n, findings[0].first("trial")))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    assert live <= {0, 1} and engine.live_sessions() == 0


BLOCKED = [condition(), gabapentin(), medication("MedicationStatement/dlx", "duloxetine", "snri")]
TRIGGERS = [trigger("trigger:MedicationRequest/oxy"), trigger("trigger:MedicationRequest/mor", "morphine")]


@pytest.mark.parametrize("facts", [
    FactSet(BLOCKED[::-1], TRIGGERS),
    FactSet(BLOCKED, TRIGGERS[::-1]),  # the blocking SNRI is the last context fact
], ids=["snri-first", "snri-last"])
def test_none_pattern_blocks_whatever_the_fact_order(snri_engine, facts):
    """An SNRI on record blocks the `none` rule in any list order (the control rule still fires)."""
    assert ids(snri_engine.evaluate("order-select", facts)) == ["order-seen", "order-seen"]


def test_none_pattern_fires_without_the_blocking_fact(snri_engine):
    """Without an SNRI on record the `none` rule fires, once per order."""
    findings = snri_engine.evaluate("order-select", FactSet(BLOCKED[:2], TRIGGERS))
    assert ids(findings) == ["opioid-without-snri"] * 2 + ["order-seen"] * 2


def test_characterization_durable_rules_none_depends_on_assert_order(snri_engine):
    """LIBRARY CHARACTERIZATION: raw durable_rules fires `none` wrongly if the trigger comes first."""
    rule = next(r for r in snri_engine.rules if r.id == "opioid-without-snri")

    class Quiet(Host):
        def _run(self):
            """No dispatch threads."""

    fired = []
    host = Quiet({"characterization": {"r": {"all": rule.condition, "run": lambda c: fired.append(c.s.sid)}}})
    for sid, facts in {"trigger-first": [TRIGGERS[0], BLOCKED[2]], "trigger-last": [BLOCKED[2], TRIGGERS[0]]}.items():
        for fact in facts:
            try:
                host.assert_fact("characterization", {**fact, "sid": sid})
            except MessageNotHandledException:
                pass
    assert fired == ["trigger-first"]  # sessions are not deleted: that crashes when nothing fired


def test_sessions_are_deleted(engine):
    """5,000 evaluations on one engine stay under the 1024-session cap and leak neither sessions nor memory."""
    facts = patient(0)
    engine.evaluate("order-select", facts)  # first use allocates the ruleset's pools
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(5000):
        assert ids(engine.evaluate("order-select", facts)) == [GABAPENTIN]
    assert engine.live_sessions() == 0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024  # KiB on Linux


def test_evaluations_that_fire_nothing_are_deleted_too(engine):
    """2,000 evaluations where no rule fires (over the 1024 cap) all return [] and leave no session."""
    warm_up(engine, "order-select")
    for _ in range(2000):
        assert engine.evaluate("order-select", FactSet([condition(), LAB], [trigger()])) == []
    assert engine.live_sessions() == 0


TCA = "first-line-inadequate-trial.tca"
TWO_TRIALS = FactSet([condition(), gabapentin(), medication("MedicationStatement/ami", "amitriptyline", "tca",
                                                            max_daily_mg=10)], [trigger()])


def test_failing_collector_drops_only_its_rule(caplog):
    """A rule whose match cannot be collected yields no finding and is logged; the others still answer."""
    rules = [dataclasses.replace(r, aliases={**r.aliases, "ghost": "lab"}) if r.id == GABAPENTIN else r
             for r in first_line_rules()]
    with caplog.at_level(logging.ERROR, logger="cds_hooks.engine"):
        findings = RulesEngine(rules).evaluate("order-select", TWO_TRIALS)
    assert ids(findings) == [TCA]
    assert f"rule {GABAPENTIN} failed while collecting" in caplog.text


def test_failing_card_template_drops_only_its_card(engine, caplog):
    """A finding whose card cannot be rendered is left out and logged; the other cards still render."""
    findings = engine.evaluate("order-select", TWO_TRIALS)
    assert ids(findings) == [GABAPENTIN, TCA]
    broken = next(f for f in findings if f.rule.id == GABAPENTIN)
    broken.rule = dataclasses.replace(broken.rule, card=broken.rule.card.model_copy(
        update={"summary": "{trial.max_daily_mg:q}"}))  # an invalid format spec fails only at render time
    with caplog.at_level(logging.ERROR, logger="cds_hooks.cards"):
        cards = render_cards(findings, "Patient/1", load_terminology(RULES))
    assert [c.extension["neuropathic-pain-cds.why"]["ruleId"] for c in cards] == [TCA]
    assert f"rule {GABAPENTIN}: card could not be rendered" in caplog.text


def test_one_finding_per_trial_with_every_trigger(engine):
    """Two matching conditions x two opioid orders give ONE gabapentin finding binding both of each."""
    facts = FactSet([condition("Condition/a"), condition("Condition/b"), gabapentin()], TRIGGERS)
    findings = engine.evaluate("order-select", facts)
    assert ids(findings) == [GABAPENTIN]
    assert sorted(f["id"] for f in findings[0].bindings["order"]) == sorted(t["id"] for t in TRIGGERS)
    assert sorted(f["id"] for f in findings[0].bindings["diagnosis"]) == ["Condition/a", "Condition/b"]
    assert [f["id"] for f in findings[0].bindings["trial"]] == ["MedicationStatement/gaba"]


def test_fact_no_rule_looks_at_is_ignored(engine):
    """A lab fact no first-line rule reads raises nothing and does not disturb the rules that fire."""
    findings = engine.evaluate("order-select", FactSet([LAB, condition(), LAB | {"id": "lab:b12"}, gabapentin()],
                                                       [trigger()]))
    assert ids(findings) == [GABAPENTIN]


def test_only_unmatched_facts_give_no_findings(engine):
    """A record of nothing but a lab gives no findings and raises nothing."""
    warm_up(engine, "patient-view")
    assert engine.evaluate("patient-view", FactSet([LAB], [])) == []
    assert engine.live_sessions() == 0


def test_empty_record_gives_no_findings(engine):
    """A record with no facts at all gives no findings and raises nothing."""
    assert engine.evaluate("patient-view", FactSet([], [])) == []


def test_not_tolerated_ignores_first_line_drugs_of_the_same_class(engine):
    """Pregabalin stopped for an adverse effect fires first-line-not-tolerated with gabapentin also on record."""
    pregabalin = medication("MedicationStatement/pgb", "pregabalin", "gabapentinoid", stop_reason="adverse-effect")
    facts = FactSet([condition(), gabapentin(), pregabalin], [trigger()])
    assert ids(engine.evaluate("order-select", facts)) == [GABAPENTIN, NOT_TOLERATED]


def test_a_condition_durable_rules_rejects_is_named_at_start_up():
    """When the C core refuses a compiled condition, start-up fails naming that rule and its pack file."""
    good = first_line_rules()
    bad = dataclasses.replace(good[0], id="broken-rule",
                              condition=[{"m": {"$iany": {"value_sets": {"$i": {"trial": "drug_class"}}}}}])
    with pytest.raises(RulePackError) as error:
        RulesEngine([*good[1:], bad])
    assert str(error.value).startswith(f"{bad.source_file}: rule broken-rule: durable_rules rejects its condition")
