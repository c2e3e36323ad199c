"""Findings -> CDS Hooks cards. A card's text comes from its rule pack's ``card`` templates.

Placeholders such as ``{trial.max_daily_mg}`` or ``{params.target_daily_mg}`` are filled
with the facts that fired the rule (the first fact bound to each alias) and the rule's
parameters; a field the record did not provide reads "unknown", and a ``[[...]]`` segment
holding an unknown or zero value is left out. The facts, the rule id,
version and parameters travel with the card in its ``extension`` so anyone can see why it
fired. A card that cannot be rendered is dropped and logged; the other cards still answer.
"""

from __future__ import annotations

import logging
import re
import string
import uuid
from dataclasses import replace
from typing import Any

from cds_hooks.engine import Finding
from cds_hooks.protocol import SUMMARY_MAX_LENGTH, Card
from cds_hooks.suggestions import SUGGESTION_BUILDERS, SuggestionInput, resolve_order
from cds_hooks.terminology import Terminology

log = logging.getLogger(__name__)

CARD_EXTENSION = "neuropathic-pain-cds.why"


def render_cards(findings: list[Finding], patient_id: str, terminology: Terminology) -> list[Card]:
    """Every finding's card, each checked against the CDS Hooks card model."""
    cards = []
    for finding in findings:
        try:
            cards.append(Card.model_validate(render_card(finding, patient_id, terminology)))
        except Exception:
            log.exception("rule %s: card could not be rendered; left out", finding.rule.id)
    return cards


def render_card(finding: Finding, patient_id: str, terminology: Terminology) -> dict:
    rule, spec = finding.rule, finding.rule.card
    values = _template_values(finding)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(spec.summary, finding),
        "detail": _fill(spec.detail, values).strip(),
        "indicator": spec.indicator,
        "source": {"label": spec.source.label, "url": spec.source.url},
    }
    suggestions = _suggestions(finding, values, patient_id, terminology)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "any"
    if spec.override_reasons:
        card["overrideReasons"] = [r.model_dump() for r in spec.override_reasons]
    if spec.links:
        card["links"] = [{"label": link.label, "url": link.url, "type": "absolute"} for link in spec.links]
    why = {"ruleId": rule.id, "ruleVersion": rule.version, "parameters": rule.parameters, "facts": finding.bindings}
    card["extension"] = {CARD_EXTENSION: {key: value for key, value in why.items() if value}}
    return card


def _suggestions(finding: Finding, values: dict, patient_id: str, terminology: Terminology) -> list[dict]:
    rule = finding.rule
    subject_alias = rule.card.subject or rule.card.one_per or next(iter(finding.bindings))
    given = SuggestionInput(
        subject=finding.first(subject_alias),
        triggers=[fact for alias, kind in rule.aliases.items() if kind == "trigger" for fact in finding.bindings[alias]],
        parameters=rule.parameters, patient_id=patient_id, terminology=terminology,
    )
    suggestions = []
    for spec in rule.card.suggestions:
        try:
            actions = SUGGESTION_BUILDERS[spec.kind].build(replace(given, order=resolve_order(spec.order, rule.parameters)))
        except Exception:  # a bad suggestion costs the suggestion, not the card
            log.exception("rule %s: suggestion %s could not be built; left out", rule.id, spec.kind)
            continue
        if actions:
            suggestions.append({"label": _fill(spec.label, values), "uuid": str(uuid.uuid4()), "actions": actions})
    return suggestions


class _FactView:
    """Attribute access to a fact for str.format; absent fields read "unknown", whole floats as ints,
    and text longer than ``text_limit`` is shortened (to keep a summary whole)."""

    def __init__(self, values: dict, text_limit: int | None = None) -> None:
        self._values = values
        self._text_limit = text_limit

    def __getattr__(self, name: str) -> Any:
        value = self._values.get(name, "unknown")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        if isinstance(value, str) and self._text_limit and len(value) > self._text_limit:
            return value[: self._text_limit - 1].rstrip() + "…"
        return value


_OPTIONAL = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)


def _fill(template: str, values: dict) -> str:
    """Fill the placeholders; a ``[[...]]`` segment is kept only when every value in it is known
    and not zero, so "[[, {trial.days_at_max} days at max]]" disappears when that is unknown."""
    def optional(match: re.Match) -> str:
        inner = match.group(1)
        names = [name for _, name, _, _ in string.Formatter().parse(inner) if name]
        shown = all(_lookup(values, name) not in (None, "unknown", 0, "") for name in names)
        return string.Formatter().vformat(inner, (), values) if shown else ""
    return string.Formatter().vformat(_OPTIONAL.sub(optional, template), (), values)


def _lookup(values: dict, name: str) -> Any:
    root, _, attribute = name.partition(".")
    return getattr(values[root], attribute)


def _template_values(finding: Finding, text_limit: int | None = None) -> dict[str, _FactView]:
    """What placeholders read: the first fact bound to each alias, and ``params``."""
    values = {alias: _FactView(facts[0], text_limit) for alias, facts in finding.bindings.items()}
    values["params"] = _FactView(finding.rule.parameters, text_limit)
    return values


def _summary(template: str, finding: Finding) -> str:
    """The summary within the CDS Hooks limit: long inserted texts (a drug's full display) are
    shortened first, so the advice at the end of the sentence survives."""
    for text_limit in (None, 40, 24, 12):
        summary = _fill(template, _template_values(finding, text_limit))
        if len(summary) <= SUMMARY_MAX_LENGTH:
            return summary
    return summary[: SUMMARY_MAX_LENGTH - 1].rstrip() + "…"
