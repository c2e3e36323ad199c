"""The rule catalogue is current, and every card rule is proven by fixtures both ways."""

from pathlib import Path

import pytest

from cds_hooks.catalogue import render_catalogue
from cds_hooks.fixtures import all_fixtures
from cds_hooks.rulebook import read_pack

PACKS = Path(__file__).resolve().parent.parent / "rules" / "packs"
CARD_RULES = [rule for path in sorted(PACKS.glob("*.yaml")) for rule in read_pack(path).rules if rule.card]


def test_committed_catalogue_is_current():
    """rules/CATALOGUE.md is what `cds-rules catalogue` generates from the packs and fixtures now."""
    assert (PACKS.parent / "CATALOGUE.md").read_text() == render_catalogue(PACKS), "run `cds-rules catalogue`"


@pytest.mark.parametrize("rule", CARD_RULES, ids=lambda rule: rule.id)
def test_every_card_rule_has_a_positive_and_a_negative_fixture(rule):
    """Each card rule (any of its variants) fires in at least one fixture and is forbidden in another."""
    def names(rule_ids) -> set[str]:
        return {rule_id for rule_id in rule_ids if rule_id == rule.id or rule_id.startswith(f"{rule.id}.")}
    fixtures = all_fixtures()
    assert [f.name for f in fixtures if names(f.expected)], "no fixture where it fires"
    assert [f.name for f in fixtures if names(f.forbidden) and not names(f.expected)], "no near-miss fixture"
