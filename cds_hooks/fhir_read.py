"""Small readers for FHIR R4 JSON shared by the fact builders."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any


def parse_date(value: str | None) -> date | None:
    """The calendar date of a FHIR date or dateTime; None for partial dates ("2026-05") or garbage."""
    try:
        return date.fromisoformat(value[:10]) if value and len(value) >= 10 else None
    except ValueError:
        return None


def reference_of(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def codings(concept: dict | None) -> list[dict]:
    return (concept or {}).get("coding", [])


def concept_text(concept: dict | None) -> str | None:
    """What a clinician would read: the concept's text, else its first coding display."""
    concept = concept or {}
    return concept.get("text") or next((c["display"] for c in codings(concept) if c.get("display")), None)


def codeable_texts(concepts: list[dict]) -> list[str]:
    """Every text and coding display of a list of CodeableConcepts."""
    texts = []
    for concept in concepts:
        texts += [concept.get("text") or ""] + [c.get("display") or "" for c in codings(concept)]
    return [t for t in texts if t]


def known_only(fact: dict) -> dict:
    """A fact without what is not known: None and empty lists (a rule on an absent field does not match)."""
    return {key: value for key, value in fact.items() if value is not None and value != []}


class MalformedResource(ValueError):
    """A resource in the record has a shape FHIR does not allow (answered with 400)."""


def read_each(resources: list, read_one: Callable[[dict], Any]) -> list:
    """``read_one`` of every resource, None results dropped; a resource it cannot read is named in the error."""
    results = []
    for resource in resources:
        try:
            result = read_one(resource)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            name = reference_of(resource) if isinstance(resource, dict) else f"a {type(resource).__name__}"
            raise MalformedResource(f"{name} in the record is malformed: {type(exc).__name__}: {exc}") from exc
        if result is not None:
            results.append(result)
    return results
