"""Small readers for FHIR R4 JSON shared by the fact builders."""

from __future__ import annotations

from datetime import date


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
