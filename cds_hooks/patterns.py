"""Compile a rule pack's ``where`` clauses into durable_rules condition JSON.

The clause language (documented in README "Writing a rule"):

    field: value                    equality
    field: {lt|lte|gt|gte: value}   comparison; several operators in one mapping are ANDed
    field: {not: value}             inequality
    field: {in: [a, b]}             one of
    field: {contains: value}        a list field holds the value (e.g. value_sets)
    field: {contains_any: [a, b]}   a list field holds one of the values
    field: {matches: regex}         the whole text field matches the regular expression
    field: {contains_match: regex}  a list field holds a value matching the regular expression
    field: {exists: true|false}     the field is present / absent
    any: [clause, ...]              OR of clause mappings
    all: [clause, ...]              AND of clause mappings

A value ``$name`` is the rule parameter ``name``; ``@alias.field`` is a field of an earlier
fact in the same rule. A comparison on an absent field never matches, so unknown data
(no dose, no date) stays silent. Every field and value is checked while compiling; the
error says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_COMPARISONS = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte", "not": "$neq"}


class PatternError(ValueError):
    """A clause that cannot be compiled; the message says which field and why."""


@dataclass(frozen=True)
class Scope:
    """What a clause may name: the fact kind's fields, parameters, earlier aliases, known codes."""

    fields: frozenset[str]
    parameters: dict[str, Any]
    aliases: dict[str, frozenset[str]]  # alias -> fields of its fact kind
    vocabulary: dict[str, frozenset[str]]  # field -> allowed values (ingredient, drug_class, value_sets...)


def compile_where(kind: str, where: dict, scope: Scope) -> dict:
    return {"$and": _references_first([{"kind": kind}, *_clauses(where, scope)])}


def _clauses(where: dict, scope: Scope) -> list[dict]:
    if not isinstance(where, dict):
        raise PatternError(f"expected a mapping of field: condition, got {where!r}")
    return [_clause(field, spec, scope) for field, spec in where.items()]


def _clause(field: str, spec: Any, scope: Scope) -> dict:
    if field in ("any", "all"):
        if not isinstance(spec, list) or not spec:
            raise PatternError(f"'{field}' needs a non-empty list of clause mappings")
        return {"$or" if field == "any" else "$and": [_and(_clauses(sub, scope)) for sub in spec]}
    if field not in scope.fields:
        raise PatternError(f"unknown field {field!r} (known: {', '.join(sorted(scope.fields))})")
    if not isinstance(spec, dict):
        return {field: _value(field, spec, scope)}
    return _and([_operator(field, op, operand, scope) for op, operand in spec.items()])


def _operator(field: str, op: str, operand: Any, scope: Scope) -> dict:
    if op in _COMPARISONS:
        return {_COMPARISONS[op]: {field: _value(field, operand, scope)}}
    if op == "in":
        values = _value(field, operand, scope, many=True)
        return {"$or": [{field: v} for v in values]}
    if op == "contains":
        value = _value(field, operand, scope)
        if isinstance(value, _Reference):
            raise PatternError(f"{field}: 'contains' takes a value, not a reference ({operand!r}): durable_rules "
                               "cannot compare list items with another fact")
        return {"$iany": {field: {"$i": value}}}
    if op == "contains_any":
        return {"$or": [{"$iany": {field: {"$i": v}}} for v in _value(field, operand, scope, many=True)]}
    if op == "matches":
        return {"$mt": {field: _pattern(field, _resolve(field, operand, scope))}}
    if op == "contains_match":
        return {"$iany": {field: {"$mt": {"$i": _pattern(field, _resolve(field, operand, scope))}}}}
    if op == "exists":
        return {"$ex" if operand else "$nex": {field: 1}}
    known = [*_COMPARISONS, "in", "contains", "contains_any", "matches", "contains_match", "exists"]
    raise PatternError(f"{field}: unknown operator {op!r} (known: {', '.join(known)})")


# durable_rules runs its own regular-expression dialect: allow only what it and Python agree on.
_PORTABLE_REGEX = re.compile(r"^[A-Za-z0-9 .\[\]*+?-]+$")


def _pattern(field: str, regex: Any) -> str:
    if not isinstance(regex, str) or not _PORTABLE_REGEX.match(regex):
        raise PatternError(f"{field}: {regex!r} is not a supported regular expression "
                           "(letters, digits, '.', '[...]', '*', '+', '?', '-'; no escapes or anchors)")
    try:
        re.compile(regex)
    except re.error as exc:
        raise PatternError(f"{field}: {regex!r} is not a regular expression: {exc}") from exc
    return regex


def _value(field: str, raw: Any, scope: Scope, many: bool = False) -> Any:
    value = _resolve(field, raw, scope)
    if isinstance(value, _Reference):
        if many:
            raise PatternError(f"{field}: a list operator takes a list, not a reference ({raw!r})")
        return value
    values = value if many else [value]
    if many and (not isinstance(value, list) or not value):
        raise PatternError(f"{field}: needs a non-empty list, got {value!r}")
    allowed = scope.vocabulary.get(field)
    unknown = [v for v in values if allowed is not None and v not in allowed]
    if unknown:
        raise PatternError(f"{field}: unknown value {unknown[0]!r} (no such value set, drug, drug class or "
                           "assessment label under rules/, or its rule is disabled)")
    return value


def _resolve(field: str, raw: Any, scope: Scope) -> Any:
    if isinstance(raw, str) and raw.startswith("$"):
        name = raw[1:]
        if name not in scope.parameters:
            raise PatternError(f"{field}: unknown parameter {raw!r}")
        return scope.parameters[name]
    if isinstance(raw, str) and raw.startswith("@"):
        alias, _, other = raw[1:].partition(".")
        if alias not in scope.aliases:
            raise PatternError(f"{field}: {raw!r} names no earlier fact (earlier: {', '.join(scope.aliases) or 'none'})")
        if other not in scope.aliases[alias]:
            raise PatternError(f"{field}: {raw!r}: the {alias!r} fact has no field {other!r}")
        return _Reference({alias: other})
    return raw


def _and(terms: list[dict]) -> dict:
    return terms[0] if len(terms) == 1 else {"$and": _references_first(terms)}


def _references_first(terms: list[dict]) -> list[dict]:
    """durable_rules drops a comparison with another fact that follows an ``$or`` in the same
    ``$and`` (it then matches too much); putting such comparisons first keeps them. Nested
    ``$and`` lists are flattened first, so no comparison hides behind an ``$or`` inside them."""
    flat = [item for term in terms for item in (term["$and"] if list(term) == ["$and"] else [term])]
    return sorted(flat, key=lambda term: not _has_reference(term))


def _has_reference(term: Any) -> bool:
    if isinstance(term, _Reference):
        return True
    if isinstance(term, dict):
        return any(_has_reference(value) for value in term.values())
    return isinstance(term, list) and any(_has_reference(item) for item in term)


class _Reference(dict):
    """A compiled ``@alias.field``: durable_rules' ``{alias: field}`` operand, marked as such."""
