"""Terminology the facts are built with: value sets, the drug table and stop reasons.

All three are data files under ``rules/`` that an informaticist edits:
``valuesets/*.json`` (FHIR ValueSet resources, ``compose`` or ``expansion``, so a VSAC
export can be dropped in), ``drugs.yaml`` (RxNorm code -> ingredient, class, strength) and
``stop_reasons.yaml`` (phrases that say why a drug was stopped).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cds_hooks.dosage import strength_mg_from_text

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


class TerminologyError(ValueError):
    """A terminology file is malformed; the message names the file and the reason."""


@dataclass(frozen=True)
class Drug:
    """What the drug table knows about a medication coding."""

    ingredient: str
    drug_class: str
    strength_mg: float | None = None  # per tablet/capsule; None for patches and unknown products
    rxnorm: str | None = None


@dataclass(frozen=True)
class Terminology:
    value_sets: dict[str, frozenset[tuple[str, str]]]  # value set id -> {(system, code)}
    value_set_titles: dict[str, str]
    drug_classes: dict[str, dict]
    ingredients: dict[str, dict]
    products: dict[str, dict]  # RxNorm product code -> {ingredient, strength_mg, display}
    stop_reason_phrases: dict[str, list[str]]  # reason -> lower-case phrases, in priority order
    value_sets_by_code: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], set[str]] = defaultdict(set)
        for value_set, members in self.value_sets.items():
            for key in members:
                index[key].add(value_set)
        object.__setattr__(self, "value_sets_by_code", {key: frozenset(ids) for key, ids in index.items()})

    def value_sets_of(self, codings: list[dict]) -> list[str]:
        """Ids of the value sets holding any of these codings, sorted."""
        found: set[str] = set()
        for coding in codings:
            found |= self.value_sets_by_code.get((coding.get("system"), coding.get("code")), frozenset())
        return sorted(found)

    def title_of(self, codings: list[dict]) -> str | None:
        """A readable name for codings that carry no display: the title of a value set holding them."""
        return next((self.value_set_titles[vs] for vs in self.value_sets_of(codings) if vs in self.value_set_titles), None)

    def drug_for(self, concept: dict | None) -> Drug | None:
        """Identify a medication CodeableConcept by RxNorm code, else by its display text."""
        concept = concept or {}
        for coding in concept.get("coding", []):
            if coding.get("system") == RXNORM:
                drug = self._drug_by_code(str(coding.get("code")))
                if drug:
                    return drug
        texts = [concept.get("text")] + [c.get("display") for c in concept.get("coding", [])]
        return next(filter(None, map(self._drug_by_text, texts)), None)

    def stop_reason(self, texts: list[str]) -> str:
        """'adverse-effect', 'ineffective' or 'unknown', from statusReason texts.

        A phrase counts unless negated just before it ("no side effects", "without nausea").
        """
        joined = " ".join(texts).lower()
        for reason, phrases in self.stop_reason_phrases.items():
            if any(_affirmed(joined, phrase) for phrase in phrases):
                return reason
        return "unknown"

    def _drug_by_code(self, code: str) -> Drug | None:
        if code in self.products:
            product = self.products[code]
            ingredient = product["ingredient"]
            return Drug(ingredient, self.ingredients[ingredient]["class"],
                        product.get("strength_mg"), code)
        for name, spec in self.ingredients.items():
            if spec.get("rxcui") == code:
                return Drug(name, spec["class"], rxnorm=code)
        return None

    def _drug_by_text(self, text: str | None) -> Drug | None:
        if not text:
            return None
        words = set(re.findall(r"[a-z]+", text.lower()))
        found = [name for name in self.ingredients if name in words]
        if len(found) != 1:  # none, or a combination product: ambiguous
            return None
        name = found[0]
        return Drug(name, self.ingredients[name]["class"], strength_mg_from_text(text))


_NEGATION = re.compile(r"\b(no|not|without|denies|denied|nor)\b(\s+\w+){0,2}\s*$")


def _affirmed(text: str, phrase: str) -> bool:
    """The phrase occurs at least once without a negation in the three words before it."""
    return any(not _NEGATION.search(text[:match.start()]) for match in re.finditer(re.escape(phrase), text))


def load_terminology(rules_dir: Path) -> Terminology:
    drugs = _read_yaml(rules_dir / "drugs.yaml")
    value_sets, titles = _load_value_sets(rules_dir / "valuesets")
    terminology = Terminology(
        value_sets=value_sets,
        value_set_titles=titles,
        drug_classes=drugs["classes"],
        ingredients=drugs["ingredients"],
        products={str(code): spec for code, spec in drugs["products"].items()},
        stop_reason_phrases={reason: [p.lower() for p in phrases]
                             for reason, phrases in _read_yaml(rules_dir / "stop_reasons.yaml").items()},
    )
    _check_drug_table(terminology, rules_dir / "drugs.yaml")
    return terminology


def _load_value_sets(folder: Path) -> tuple[dict[str, frozenset[tuple[str, str]]], dict[str, str]]:
    """Members and titles of every ValueSet in the folder."""
    value_sets: dict[str, set[tuple[str, str]]] = defaultdict(set)
    titles: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            resource = json.loads(path.read_text())
            if resource.get("resourceType") != "ValueSet" or not resource.get("id"):
                raise TerminologyError("not a ValueSet resource with an id")
            members = value_sets[resource["id"]]
            if resource.get("title"):
                titles[resource["id"]] = resource["title"]
            for include in resource.get("compose", {}).get("include", []):
                members.update((include["system"], c["code"]) for c in include.get("concept", []))
            members.update((c["system"], c["code"]) for c in resource.get("expansion", {}).get("contains", []))
            if not members:
                raise TerminologyError("no codes in compose.include[].concept or expansion.contains")
        except (json.JSONDecodeError, KeyError, TerminologyError) as exc:
            raise TerminologyError(f"{path}: {exc}") from exc
    return {vs: frozenset(members) for vs, members in value_sets.items()}, titles


def _check_drug_table(terminology: Terminology, path: Path) -> None:
    for name, spec in terminology.ingredients.items():
        if spec.get("class") not in terminology.drug_classes:
            raise TerminologyError(f"{path}: ingredient {name!r} has unknown class {spec.get('class')!r}")
    for code, spec in terminology.products.items():
        if spec.get("ingredient") not in terminology.ingredients:
            raise TerminologyError(f"{path}: product {code} has unknown ingredient {spec.get('ingredient')!r}")


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TerminologyError(f"{path}: {exc}") from exc
