"""Rule packs and site settings load into compiled rules, or fail naming file, rule id and reason."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cds_hooks.cli import app
from cds_hooks.rulebook import RulePackError
from rule_factories import GABAPENTIN, copy_rules, load_dir, shipped_rules, snri_pack, write_yaml

RULE = "opioid-without-snri"
VARIANTS = ["gabapentin", "pregabalin", "duloxetine", "venlafaxine", "tca"]


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    return copy_rules(tmp_path)


def write_pack(rules_dir: Path, change=None) -> Path:
    """The test pack (rule `opioid-without-snri` first), after ``change(rule)``."""
    pack = snri_pack()
    if change:
        change(pack["rules"][0])
    return write_yaml(rules_dir / "packs" / "test.yaml", pack)


def where(pattern: dict) -> dict:
    return pattern.get("none", pattern)["where"]


BROKEN_RULES = [
    pytest.param(lambda r: r.update(colour="red"), "colour: Extra inputs are not permitted", id="schema-unknown-key"),
    pytest.param(lambda r: r["when"].insert(0, {"fact": "allergy", "as": "a"}), "unknown fact 'allergy'",
                 id="unknown-fact-kind"),
    pytest.param(lambda r: where(r["when"][0]).update(dose=5), "unknown field 'dose'", id="unknown-where-field"),
    pytest.param(lambda r: where(r["when"][0]).update(drug_class={"in": "$nope"}), "unknown parameter '$nope'",
                 id="unknown-parameter"),
    pytest.param(lambda r: r["when"].insert(0, {"fact": "condition", "where": {"value_sets": {"contains": "no-such-set"}}}),
                 "value_sets: unknown value 'no-such-set'", id="unknown-value-set"),
    pytest.param(lambda r: where(r["when"][1]).update(drug_class="ssri"), "drug_class: unknown value 'ssri'",
                 id="unknown-drug-class"),
    pytest.param(lambda r: r["card"].update(summary="{order.dose}"), "card placeholder {order.dose} names no fact field",
                 id="unknown-card-placeholder"),
    pytest.param(lambda r: r["card"].update(suggestions=[{"kind": "teleport", "label": "Go"}]),
                 "unknown suggestion kind 'teleport'", id="unknown-suggestion-kind"),
    pytest.param(lambda r: r["when"].pop(0), "'when' needs a trigger fact", id="no-trigger-fact"),
    pytest.param(lambda r: r["when"].append({"none": {"fact": "trigger", "where": {"drug_class": "tramadol"}}}),
                 "a 'none' pattern must match context facts", id="none-on-trigger"),
]




def test_yaml_syntax_error_names_file_and_line(rules_dir):
    """A pack that is not YAML stops loading with its file and the line of the error."""
    path = rules_dir / "packs" / "test.yaml"
    path.write_text("pack: test\nrules:\n  - id: broken\n    when: [\n")
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert str(error.value).startswith(f"{path}: not valid YAML")
    assert "line 5" in str(error.value)


def test_site_settings_naming_unknown_rule(rules_dir):
    """site.yaml naming a rule no pack defines stops loading with site.yaml, that id and the reason."""
    write_yaml(rules_dir / "site.yaml", {"rules": {"no-such-rule": {"enabled": False}}})
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert str(error.value).startswith(f"{rules_dir / 'site.yaml'}: rule no-such-rule: no such rule")


def test_site_override_of_unknown_parameter(rules_dir):
    """site.yaml overriding a parameter the rule lacks stops loading with site.yaml, the rule id and the reason."""
    write_yaml(rules_dir / "site.yaml", {"rules": {GABAPENTIN: {"parameters": {"nope": 1}}}})
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert str(error.value).startswith(f"{rules_dir / 'site.yaml'}: rule {GABAPENTIN}: unknown parameter 'nope'")


def by_id(rules) -> dict:
    return {rule.id: rule for rule in rules}


def test_variants_become_dotted_ids():
    """A rule with variants compiles to `<id>.<variant>`, one per variant, with the variant's values."""
    rules = by_id(shipped_rules())
    assert {f"first-line-inadequate-trial.{v}" for v in VARIANTS} <= set(rules)
    assert not {"first-line-inadequate-trial"} & set(rules)
    assert rules["first-line-inadequate-trial.pregabalin"].parameters["target_daily_mg"] == 300
    assert rules["first-line-inadequate-trial.pregabalin"].family == "first-line-inadequate-trial"


def test_site_override_of_one_variant(rules_dir):
    """A variant-level site override changes that variant's compiled parameters and condition only."""
    before = by_id(load_dir(rules_dir))
    write_yaml(rules_dir / "site.yaml", {"rules": {GABAPENTIN: {"parameters": {"min_egfr": 45}}}})
    after = by_id(load_dir(rules_dir))
    assert after[GABAPENTIN].parameters["min_egfr"] == 45
    assert "'value': 45" in str(after[GABAPENTIN].condition) and "'value': 60" not in str(after[GABAPENTIN].condition)
    assert {i: r.parameters for i, r in after.items() if i != GABAPENTIN} == \
           {i: r.parameters for i, r in before.items() if i != GABAPENTIN}


def test_family_override_applies_to_every_variant(rules_dir):
    """A family-level site override reaches all variants; a variant-level one wins over it."""
    write_yaml(rules_dir / "site.yaml", {"rules": {
        "first-line-inadequate-trial": {"parameters": {"escalation_classes": ["strong-opioid"], "min_egfr": 20}},
        GABAPENTIN: {"parameters": {"min_egfr": 45}},
    }})
    rules = by_id(load_dir(rules_dir))
    for variant in VARIANTS:
        assert rules[f"first-line-inadequate-trial.{variant}"].parameters["escalation_classes"] == ["strong-opioid"]
    assert rules["first-line-inadequate-trial.tca"].parameters["min_egfr"] == 20
    assert rules[GABAPENTIN].parameters["min_egfr"] == 45
    assert rules["first-line-not-tolerated"].parameters["escalation_classes"] == ["strong-opioid", "tramadol"]


@pytest.mark.parametrize("key, removed", [
    ("first-line-not-tolerated", {"first-line-not-tolerated"}),
    (GABAPENTIN, {GABAPENTIN}),
    ("first-line-inadequate-trial", {f"first-line-inadequate-trial.{v}" for v in VARIANTS}),
])
def test_enabled_false_removes_rule(rules_dir, key, removed):
    """`enabled: false` in site.yaml removes the rule (a family key removes all its variants)."""
    everything = set(by_id(load_dir(rules_dir)))
    write_yaml(rules_dir / "site.yaml", {"rules": {key: {"enabled": False}}})
    assert set(by_id(load_dir(rules_dir))) == everything - removed


def test_draft_rule_is_not_compiled(rules_dir):
    """A `status: draft` rule is left out while the active rules of its pack load."""
    write_pack(rules_dir, lambda r: r.update(status="draft"))
    ids = set(by_id(load_dir(rules_dir)))
    assert "order-seen" in ids and RULE not in ids


runner = CliRunner()


def test_cli_validate_lists_shipped_rules():
    """`cds-rules validate` exits 0 and lists every compiled rule id of the shipped rules."""
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    for rule in shipped_rules():
        assert rule.id in result.output
    assert f"ok: {len(shipped_rules())} rules" in result.output


def test_cli_validate_reports_broken_copy(rules_dir):
    """`cds-rules validate --rules-dir` exits 1 and prints file, rule id and reason."""
    path = write_pack(rules_dir, lambda r: where(r["when"][0]).update(dose=5))
    result = runner.invoke(app, ["validate", "--rules-dir", str(rules_dir)])
    assert result.exit_code == 1
    assert f"{path}: rule {RULE}: unknown field 'dose'" in result.output


# --- assessment rules, variant sets and suggestion orders ------------------------------------------

def as_assessment(rule: dict, subject: str = "trial", when: list | None = None) -> None:
    """Turn the test rule into an assessment rule about a medication (or over ``when``)."""
    rule.pop("card")
    rule.pop("parameters", None)  # they were read by the trigger pattern this drops
    rule["assess"] = {"label": "judged", "subject": subject}
    rule["when"] = when if when is not None else [{"fact": "medication", "as": "trial"}]


def suggest(rule: dict, kind: str, order) -> None:
    rule["card"]["suggestions"] = [{"kind": kind, "label": "Do it", "order": order}]


GABAPENTIN_ORDER = {"rxnorm": "310431", "dose_mg": 300, "times_per_day": 3}

def declare_unused(rule: dict) -> None:
    rule.setdefault("parameters", {})["forgotten"] = {"default": 1, "description": "read by nothing"}


BROKEN_ASSESSMENTS_AND_ORDERS = [
    pytest.param(declare_unused, "parameter 'forgotten' is declared but no clause, card text or suggestion uses it",
                 id="unused-parameter"),
    pytest.param(lambda r: as_assessment(r, when=[{"fact": "medication", "as": "trial"}, {"fact": "trigger", "as": "o"}]),
                 "an assessment rule judges the record only: no trigger fact", id="assess-with-trigger"),
    pytest.param(lambda r: r.update(when=[{"fact": "condition", "as": "dx"},
                                          {"none": {"fact": "medication", "where": {"drug_class": "snri"}}}]),
                 "'when' needs a trigger fact", id="card-without-trigger"),
    pytest.param(lambda r: r.update(assess={"label": "judged", "subject": "order"}),
                 "a rule has either a 'card' or an 'assess' section", id="card-and-assess"),
    pytest.param(lambda r: r.pop("card"), "a rule has either a 'card' or an 'assess' section", id="neither"),
    pytest.param(lambda r: as_assessment(r, subject="nobody"), "assess.subject 'nobody' names no fact alias",
                 id="assess-subject-not-an-alias"),
    pytest.param(lambda r: as_assessment(r, subject="m_0", when=[{"fact": "medication"}]),
                 "assess.subject 'm_0' names no fact alias", id="assess-subject-unnamed-pattern"),
    pytest.param(lambda r: suggest(r, "order", "$nope"), "suggestion 'order': unknown parameter '$nope'",
                 id="order-unknown-parameter"),
    pytest.param(lambda r: suggest(r, "replace-trigger-order", "$nope"),
                 "suggestion 'replace-trigger-order': unknown parameter '$nope'", id="replace-unknown-parameter"),
    pytest.param(lambda r: suggest(r, "order", {**GABAPENTIN_ORDER, "rxnorm": "999999"}), "'999999'",
                 id="order-rxnorm-not-in-drug-table"),
    pytest.param(lambda r: suggest(r, "order", {**GABAPENTIN_ORDER, "rxnorm": "25480"}), "'25480'",
                 id="order-ingredient-code-not-a-product"),
    pytest.param(lambda r: suggest(r, "order", None), "suggestion 'order': an order is a mapping",
                 id="order-missing"),
    pytest.param(lambda r: suggest(r, "order", {"rxnorm": "310431", "dose_mg": 300}), "'times_per_day'",
                 id="order-missing-times-per-day"),
    pytest.param(lambda r: suggest(r, "order-for-subject-class", {"ssri": GABAPENTIN_ORDER}),
                 "suggestion 'order-for-subject-class': needs a mapping of drug class -> order", id="order-by-unknown-class"),
    pytest.param(lambda r: suggest(r, "order-for-subject-class", {"snri": {**GABAPENTIN_ORDER, "rxnorm": "1"}}),
                 "suggestion 'order-for-subject-class': order", id="order-by-class-bad-order"),
]


def test_variant_set_naming_an_undefined_set(rules_dir):
    """A rule's variant_set naming a set the pack does not define stops loading with file, rule id and reason."""
    path = write_pack(rules_dir, lambda r: r.update(variant_set="no-such-set"))
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert f"rule {RULE}: variant_set 'no-such-set' is not defined in variant_sets" in message


@pytest.mark.parametrize("variant_sets, reason", [
    ({"no-such-set": {"gabapentin": {"target_daily_mg": 2400}}}, "variant set no-such-set: no such variant set"),
    ({"first-line-trial": {"oxcarbazepine": {"target_daily_mg": 2400}}},
     "variant set first-line-trial: unknown variant 'oxcarbazepine'"),
    ({"first-line-trial": {"gabapentin": {"target_dose": 2400}}},
     "variant set first-line-trial.gabapentin: unknown parameter 'target_dose'"),
    # only first-line-inadequate-trial declares titration_steps: not a parameter of every rule sharing the set
    ({"first-line-trial": {"gabapentin": {"titration_steps": {}}}},
     "variant set first-line-trial.gabapentin: unknown parameter 'titration_steps'"),
], ids=["unknown-set", "unknown-variant", "unknown-parameter", "parameter-of-one-rule-only"])
def test_site_variant_sets_mistakes(rules_dir, variant_sets, reason):
    """site.yaml `variant_sets` naming an unknown set, variant or parameter stops loading with site.yaml and the reason."""
    site = write_yaml(rules_dir / "site.yaml", {"variant_sets": variant_sets})
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert str(error.value).startswith(f"{site}: {reason}")


ADEQUATE_GABAPENTIN = "first-line-adequate-trial.gabapentin"


def test_site_variant_set_override_reaches_every_rule_of_the_set(rules_dir):
    """A site variant_sets override changes that variant in every rule sharing the set, and nothing else."""
    before = by_id(load_dir(rules_dir))
    write_yaml(rules_dir / "site.yaml", {"variant_sets": {"first-line-trial": {"gabapentin": {"target_daily_mg": 2400}}}})
    after = by_id(load_dir(rules_dir))
    changed = {GABAPENTIN, ADEQUATE_GABAPENTIN, "first-line-trial-in-progress.gabapentin"}
    for rule_id in changed:
        assert before[rule_id].parameters["target_daily_mg"] == 1800
        assert after[rule_id].parameters == {**before[rule_id].parameters, "target_daily_mg": 2400}
    for rule_id in (GABAPENTIN, ADEQUATE_GABAPENTIN):  # the ones whose clauses compare with the target
        assert "2400" in str(after[rule_id].condition) and "1800" not in str(after[rule_id].condition)
    assert set(after) == set(before)
    assert {i: (r.parameters, r.condition) for i, r in after.items() if i not in changed} == \
           {i: (r.parameters, r.condition) for i, r in before.items() if i not in changed}


def test_rule_level_override_of_a_shared_parameter_is_rejected(rules_dir):
    """A site override of a variant-set parameter on one rule is refused: the rules sharing it would disagree."""
    write_yaml(rules_dir / "site.yaml", {"rules": {ADEQUATE_GABAPENTIN: {"parameters": {"target_daily_mg": 3000}}}})
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert f"rule {ADEQUATE_GABAPENTIN}: parameter 'target_daily_mg' comes from a variant set" in str(error.value)
    assert "site.yaml" in str(error.value)


def test_assessment_rule_compiles_with_end_of_facts(rules_dir):
    """An assessment rule loads with its label and subject, and waits for end-of-facts to complete its match."""
    write_pack(rules_dir, lambda r: as_assessment(r))
    rule = by_id(load_dir(rules_dir))[RULE]
    assert (rule.card, rule.assess.label, rule.assess.subject) == (None, "judged", "trial")
    assert rule.condition[-1] == {"m_1": {"$and": [{"kind": "end-of-facts"}]}}


def test_suggestion_order_by_parameter_loads(rules_dir):
    """A suggestion `order: $name` naming a parameter that holds a valid order loads."""
    def change(rule):
        rule["parameters"]["alternative"] = {"default": GABAPENTIN_ORDER, "description": "what to order"}
        suggest(rule, "replace-trigger-order", "$alternative")
    write_pack(rules_dir, change)
    assert by_id(load_dir(rules_dir))[RULE].parameters["alternative"] == GABAPENTIN_ORDER


def test_suggestion_order_string_needs_a_dollar(rules_dir):
    """A suggestion `order` string that does not start with `$` is rejected."""
    def change(rule):
        rule["parameters"]["alternative"] = {"default": GABAPENTIN_ORDER, "description": "what to order"}
        suggest(rule, "order", "#alternative")
    write_pack(rules_dir, change)
    with pytest.raises(RulePackError, match=f"rule {RULE}: suggestion 'order'"):
        load_dir(rules_dir)


@pytest.mark.parametrize("change, reason", BROKEN_RULES + BROKEN_ASSESSMENTS_AND_ORDERS)
def test_broken_rule_names_file_rule_and_reason(rules_dir, change, reason):
    """A malformed rule stops loading with its pack file, its rule id and the reason."""
    path = write_pack(rules_dir, change)
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert str(error.value).startswith(f"{path}: rule {RULE}: ")
    assert reason in str(error.value)


def test_disabling_an_assessment_fails_the_rules_that_need_it(rules_dir):
    """Switching off the adequate-trial assessment stops loading at the first card rule that reads its label."""
    write_yaml(rules_dir / "site.yaml", {"rules": {"first-line-adequate-trial": {"enabled": False}}})
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert "label: unknown value 'adequate-trial'" in str(error.value)
    assert "or its rule is disabled" in str(error.value)
