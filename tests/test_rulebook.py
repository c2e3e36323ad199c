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


@pytest.mark.parametrize("change, reason", BROKEN_RULES)
def test_broken_rule_names_file_rule_and_reason(rules_dir, change, reason):
    """A malformed rule stops loading with its pack file, its rule id and the reason."""
    path = write_pack(rules_dir, change)
    with pytest.raises(RulePackError) as error:
        load_dir(rules_dir)
    assert f"{path}: rule {RULE}: " in str(error.value)
    assert reason in str(error.value)


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
    write_yaml(rules_dir / "site.yaml", {"rules": {GABAPENTIN: {"parameters": {"target_daily_mg": 2400}}}})
    after = by_id(load_dir(rules_dir))
    assert after[GABAPENTIN].parameters["target_daily_mg"] == 2400
    assert "2400" in str(after[GABAPENTIN].condition) and "1800" not in str(after[GABAPENTIN].condition)
    assert {i: r.parameters for i, r in after.items() if i != GABAPENTIN} == \
           {i: r.parameters for i, r in before.items() if i != GABAPENTIN}


def test_family_override_applies_to_every_variant(rules_dir):
    """A family-level site override reaches all variants; a variant-level one wins over it."""
    write_yaml(rules_dir / "site.yaml", {"rules": {
        "first-line-inadequate-trial": {"parameters": {"escalation_classes": ["strong-opioid"], "min_days_at_max": 7}},
        GABAPENTIN: {"parameters": {"min_days_at_max": 21}},
    }})
    rules = by_id(load_dir(rules_dir))
    for variant in VARIANTS:
        assert rules[f"first-line-inadequate-trial.{variant}"].parameters["escalation_classes"] == ["strong-opioid"]
    assert rules["first-line-inadequate-trial.tca"].parameters["min_days_at_max"] == 7
    assert rules[GABAPENTIN].parameters["min_days_at_max"] == 21
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
