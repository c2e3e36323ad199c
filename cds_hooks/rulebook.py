"""Load rule packs (``rules/packs/*.yaml``) and site settings into checked, compiled rules.

Everything that can be wrong with a pack is found here, at start-up, and reported with
the file, the rule id and the reason (``RulePackError``): schema, unknown fact fields,
parameters, value sets, drug classes, card placeholders and suggestion kinds. A rule with
``variants`` becomes one compiled rule per variant, with id ``<rule id>.<variant>``.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cds_hooks.facts import END_OF_FACTS, FACT_FIELDS, TRIGGER_KINDS
from cds_hooks.patterns import PatternError, Scope, compile_where
from cds_hooks.rulepack_schema import (AssessSpec, CardSpec, NoneSpec, PackSpec, PatternSpec, RuleSpec, SiteRuleSettings,
                                       SiteSettings, SuggestionSpec)
from cds_hooks.suggestions import SUGGESTION_BUILDERS, check_order, resolve_order
from cds_hooks.terminology import Terminology

_ALIAS = re.compile(r"^[a-z][a-z0-9_]*$")


class RulePackError(ValueError):
    """A rule pack or site settings file that cannot be loaded; says file, rule id and reason."""


@dataclass(frozen=True)
class CompiledRule:
    id: str
    family: str
    version: str
    hooks: tuple[str, ...]
    parameters: dict[str, Any]
    aliases: dict[str, str]  # alias -> fact kind
    condition: list[dict]  # the durable_rules "all" list, context first, triggers, then none
    card: CardSpec | None
    assess: AssessSpec | None
    source_file: str


def load_rules(packs_dir: Path, site_settings: Path | None, terminology: Terminology) -> list[CompiledRule]:
    """Every active, site-enabled rule of every pack, compiled. Raises RulePackError."""
    site = _load_site_settings(site_settings)
    packs = [(path, read_pack(path)) for path in sorted(packs_dir.glob("*.yaml"))]
    _check_site_settings(site, site_settings, [pack for _, pack in packs])
    labels = {rule.assess.label for _, pack in packs for rule in pack.rules
              if rule.assess and rule.status == "active" and site.rules.get(rule.id, SiteRuleSettings()).enabled}
    vocabulary = _vocabulary(terminology, labels)
    rules = [rule for path, pack in packs for rule in _compile_pack(pack, path, site, terminology, vocabulary)]
    ids = [r.id for r in rules]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise RulePackError(f"{packs_dir}: rule {duplicate}: defined twice")
    return [r for r in rules if _enabled(r, site)]


def _check_site_settings(site: SiteSettings, path: Path | None, packs: list[PackSpec]) -> None:
    """Site settings may only name rules (inactive ones included), variants and parameters that exist."""
    parameters_of: dict[str, set[str]] = {}
    set_parameters: dict[str, set[str]] = {}  # variant set -> parameters every rule using it declares
    set_variants: dict[str, set[str]] = {}
    shared_of: dict[str, set[str]] = {}  # rule id -> parameters its variant set provides
    for pack in packs:
        set_variants.update({name: set(variants) for name, variants in pack.variant_sets.items()})
        for rule in pack.rules:
            from_set = {p for values in pack.variant_sets.get(rule.variant_set or "", {}).values() for p in values}
            for rule_id in [rule.id, *(f"{rule.id}.{variant}" for variant in pack.variants_of(rule))]:
                parameters_of[rule_id] = set(rule.parameters)
                shared_of[rule_id] = from_set
            if rule.variant_set:
                shared = set_parameters.get(rule.variant_set, set(rule.parameters))
                set_parameters[rule.variant_set] = shared & set(rule.parameters)
    for rule_id, settings in site.rules.items():
        if rule_id not in parameters_of:
            raise RulePackError(f"{path}: rule {rule_id}: no such rule in the rule packs")
        _no_unknown(settings.parameters, parameters_of[rule_id], f"{path}: rule {rule_id}: unknown parameter")
        shared = sorted(set(settings.parameters) & shared_of.get(rule_id, set()))
        if shared:
            raise RulePackError(f"{path}: rule {rule_id}: parameter {shared[0]!r} comes from a variant set shared "
                                "with other rules; override it under variant_sets so they stay consistent")
    for name, variants in site.variant_sets.items():
        if name not in set_variants:
            raise RulePackError(f"{path}: variant set {name}: no such variant set in the rule packs")
        _no_unknown(variants, set_variants[name], f"{path}: variant set {name}: unknown variant")
        for variant, values in variants.items():
            _no_unknown(values, set_parameters.get(name, set()),
                        f"{path}: variant set {name}.{variant}: unknown parameter")


def _no_unknown(given: dict, known: set[str], message: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise RulePackError(f"{message} {unknown[0]!r}")


def read_pack(path: Path) -> PackSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RulePackError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return PackSpec.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = list(error["loc"])
        rule = ""
        if location[:1] == ["rules"] and len(location) > 1 and isinstance(location[1], int):
            rule = f"rule {_raw_rule_id(raw, location[1])}: "
            location = location[2:]
        where = ".".join(str(part) for part in location)
        raise RulePackError(f"{path}: {rule}{where}: {error['msg']}") from exc


def _raw_rule_id(raw: dict, index: int) -> str:
    try:
        return str(raw["rules"][index]["id"])
    except (KeyError, IndexError, TypeError):
        return f"#{index + 1}"


def _compile_pack(pack: PackSpec, path: Path, site: SiteSettings, terminology: Terminology,
                  vocabulary: dict[str, frozenset[str]]) -> list[CompiledRule]:
    compiled = []
    for rule in pack.rules:
        if rule.status != "active":
            continue
        site_values = site.variant_sets.get(rule.variant_set or "", {})
        for variant, values in (pack.variants_of(rule) or {None: {}}).items():
            rule_id = f"{rule.id}.{variant}" if variant else rule.id
            try:
                parameters = _parameters(rule, {**values, **site_values.get(variant, {})}, site, rule_id)
                compiled.append(_compile(rule, rule_id, parameters, terminology, vocabulary, path))
            except (PatternError, RulePackError) as exc:
                raise RulePackError(f"{path}: rule {rule_id}: {exc}") from exc
    return compiled


def _parameters(rule: RuleSpec, variant_values: dict, site: SiteSettings, rule_id: str) -> dict[str, Any]:
    overrides = [variant_values, site.rules.get(rule.id, SiteRuleSettings()).parameters,
                 site.rules.get(rule_id, SiteRuleSettings()).parameters if rule_id != rule.id else {}]
    values = {name: spec.default for name, spec in rule.parameters.items()}
    for layer in overrides:
        unknown = set(layer) - set(rule.parameters)
        if unknown:
            raise RulePackError(f"unknown parameter {sorted(unknown)[0]!r}")
        values.update(layer)
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise RulePackError(f"parameter {missing[0]!r} has no value (no default, variant or site value)")
    return values


def _compile(rule: RuleSpec, rule_id: str, parameters: dict, terminology: Terminology,
             vocabulary: dict[str, frozenset[str]], path: Path) -> CompiledRule:
    positives = [p for p in rule.when if isinstance(p, PatternSpec)]
    triggered = any(p.fact in TRIGGER_KINDS for p in positives)
    if rule.card and not triggered:
        raise RulePackError("'when' needs a trigger fact: card rules fire on what is being ordered or opened")
    if rule.assess and triggered:
        raise RulePackError("an assessment rule judges the record only: no trigger fact in 'when'")
    if rule.assess:  # assessed once the whole record is in: end-of-facts completes the match
        positives = positives + [PatternSpec(fact=END_OF_FACTS)]
    ordered = ([p for p in positives if p.fact not in TRIGGER_KINDS] + [p for p in positives if p.fact in TRIGGER_KINDS]
               + [n.none for n in rule.when if isinstance(n, NoneSpec)])
    aliases: dict[str, str] = {}
    condition = []
    for index, pattern in enumerate(ordered):
        negated = index >= len(positives)
        _check_pattern(pattern, negated, aliases)
        scope = Scope(FACT_FIELDS[pattern.fact], parameters,
                      {a: FACT_FIELDS[k] for a, k in aliases.items()}, vocabulary)
        name = f"m_{index}$not" if negated else (pattern.alias or f"m_{index}")
        condition.append({name: compile_where(pattern.fact, pattern.where, scope)})
        if pattern.alias:
            aliases[pattern.alias] = pattern.fact
    if rule.card:
        _check_card(rule.card, aliases, parameters, terminology)
    elif rule.assess.subject not in aliases:
        raise RulePackError(f"assess.subject {rule.assess.subject!r} names no fact alias")
    _check_parameters_used(rule)
    return CompiledRule(rule_id, rule.id, rule.version, tuple(rule.hooks), parameters, aliases, condition,
                        rule.card, rule.assess, str(path))


def _check_parameters_used(rule: RuleSpec) -> None:
    """A declared parameter nothing reads is a mistake (a renamed clause, a stale site override)."""
    text = json.dumps([item.model_dump(by_alias=True) for item in rule.when]) + (rule.card.model_dump_json() if rule.card else "")
    read_by_builders = {name for s in (rule.card.suggestions if rule.card else [])
                        for name in SUGGESTION_BUILDERS.get(s.kind, SUGGESTION_BUILDERS["order"]).parameters}
    unused = [name for name in rule.parameters
              if f'"${name}"' not in text and f"params.{name}" not in text and name not in read_by_builders]
    if unused:
        raise RulePackError(f"parameter {unused[0]!r} is declared but no clause, card text or suggestion uses it")


def _check_pattern(pattern: PatternSpec, negated: bool, aliases: dict[str, str]) -> None:
    if pattern.fact not in FACT_FIELDS:
        raise RulePackError(f"unknown fact {pattern.fact!r} (known: {', '.join(sorted(FACT_FIELDS))})")
    if negated and (pattern.fact in TRIGGER_KINDS or pattern.alias):
        raise RulePackError("a 'none' pattern must match context facts and cannot be named with 'as'")
    if pattern.alias and (not _ALIAS.match(pattern.alias) or pattern.alias in aliases or pattern.alias == "params"):
        raise RulePackError(f"alias {pattern.alias!r} must be a new lower-case name other than 'params'")


def _check_card(card: CardSpec, aliases: dict[str, str], parameters: dict, terminology: Terminology) -> None:
    for field_name in ("one_per", "subject"):
        alias = getattr(card, field_name)
        if alias is not None and alias not in aliases:
            raise RulePackError(f"card.{field_name} {alias!r} names no fact alias")
    for suggestion in card.suggestions:
        _check_suggestion(suggestion, parameters, terminology)
    templates = [card.summary, card.detail, *(s.label for s in card.suggestions)]
    for template in templates:
        for _, field_name, format_spec, conversion in string.Formatter().parse(template):
            if format_spec or conversion:
                raise RulePackError(f"card placeholder {{{field_name}}}: format specs and conversions are not "
                                    "supported (numbers are formatted by the card renderer)")
            if field_name is not None:
                _check_placeholder(field_name, aliases, parameters)


def _check_suggestion(suggestion: SuggestionSpec, parameters: dict, terminology: Terminology) -> None:
    builder = SUGGESTION_BUILDERS.get(suggestion.kind)
    if builder is None:
        raise RulePackError(f"unknown suggestion kind {suggestion.kind!r} (known: {', '.join(SUGGESTION_BUILDERS)})")
    if not builder.needs_order:
        return
    if isinstance(suggestion.order, str) and (not suggestion.order.startswith("$") or suggestion.order[1:] not in parameters):
        raise RulePackError(f"suggestion {suggestion.kind!r}: unknown parameter {suggestion.order!r} "
                            "(an order is a mapping or names a $parameter)")
    order = resolve_order(suggestion.order, parameters)
    try:
        if builder.orders_by_class:
            if not isinstance(order, dict) or set(order) - set(terminology.drug_classes):
                raise ValueError(f"needs a mapping of drug class -> order, got {order!r}")
            for each in order.values():
                check_order(each, terminology)
        else:
            check_order(order, terminology)
    except ValueError as exc:
        raise RulePackError(f"suggestion {suggestion.kind!r}: {exc}") from exc


def _check_placeholder(name: str, aliases: dict[str, str], parameters: dict) -> None:
    root, _, attribute = name.partition(".")
    if root == "params" and attribute in parameters:
        return
    if root in aliases and attribute in FACT_FIELDS[aliases[root]]:
        return
    raise RulePackError(f"card placeholder {{{name}}} names no fact field or parameter")


def _vocabulary(terminology: Terminology, assessment_labels: set[str]) -> dict[str, frozenset[str]]:
    """Values a clause may compare these fields with; anything else is a typo caught at load."""
    value_sets = frozenset(terminology.value_sets)
    return {"ingredient": frozenset(terminology.ingredients), "drug_class": frozenset(terminology.drug_classes),
            "drug_classes": frozenset(terminology.drug_classes), "ingredients": frozenset(terminology.ingredients),
            "value_sets": value_sets, "concept": value_sets, "label": frozenset(assessment_labels)}


def _load_site_settings(path: Path | None) -> SiteSettings:
    if path is None:
        return SiteSettings()
    try:
        return SiteSettings.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise RulePackError(f"{path}: {exc}") from exc


def _enabled(rule: CompiledRule, site: SiteSettings) -> bool:
    return all(site.rules[key].enabled for key in (rule.family, rule.id) if key in site.rules)
