"""Cards are rendered from their rule's templates and keep what matters when something is off."""

import logging

from cds_hooks.cards import render_cards
from cds_hooks.engine import Finding
from cds_hooks.protocol import SUMMARY_MAX_LENGTH
from cds_hooks.suggestions import SUGGESTION_BUILDERS, Builder
from cds_hooks.terminology import load_terminology
from rule_factories import RULES, shipped_rules

TERMINOLOGY = load_terminology(RULES)
LONG_DISPLAY = "Postherpetic neuralgia of the right thoracic dermatomes T4 to T6 following herpes zoster ophthalmicus"


def capsaicin_finding() -> Finding:
    rule = next(r for r in shipped_rules() if r.id == "focal-capsaicin-not-tried")
    return Finding(rule, {
        "focal": [{"kind": "condition", "id": "Condition/phn", "display": LONG_DISPLAY}],
        "treated": [{"kind": "medication", "id": "medication:gabapentin", "ingredient": "gabapentin"}],
        "order": [{"kind": "trigger", "id": "trigger:hook", "origin": "hook", "hook": "patient-view"}],
    })


def test_long_inserted_text_is_shortened_so_the_summary_keeps_its_advice():
    """A long condition display is shortened inside the summary; the advice at its end survives."""
    [card] = render_cards([capsaicin_finding()], "p1", TERMINOLOGY)
    assert len(card.summary) <= SUMMARY_MAX_LENGTH
    assert card.summary.endswith("consider a capsaicin 8% patch")
    assert "Postherpetic neuralgia" in card.summary and LONG_DISPLAY not in card.summary
    assert LONG_DISPLAY in card.detail


def test_a_failing_suggestion_costs_the_suggestion_not_the_card(monkeypatch, caplog):
    """When a suggestion cannot be built, the card is still sent without it, and the error is logged."""
    def broken(given):
        raise KeyError("no such product")
    monkeypatch.setitem(SUGGESTION_BUILDERS, "order", Builder(broken, needs_order=True))
    with caplog.at_level(logging.ERROR):
        [card] = render_cards([capsaicin_finding()], "p1", TERMINOLOGY)
    assert card.suggestions is None and card.selectionBehavior is None
    assert "suggestion order could not be built" in caplog.text


def test_optional_segments_drop_unknown_or_zero_values():
    """A `[[...]]` template segment disappears when a value in it is unknown or zero, and stays otherwise."""
    from cds_hooks.cards import _fill, _template_values
    finding = capsaicin_finding()
    finding.bindings["treated"][0].update(days_on_therapy=60)
    values = _template_values(finding)
    template = "gabapentin[[ for {treated.days_on_therapy} days]][[ at {treated.max_daily_mg} mg/day]][[, {params.capsaicin_patch_codes}]]"
    assert _fill(template, values) == "gabapentin for 60 days, 1039679"
    finding.bindings["treated"][0].update(days_on_therapy=0)
    assert _fill(template, _template_values(finding)) == "gabapentin, 1039679"
