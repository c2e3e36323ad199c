"""The shape of a rule pack and of site settings, as pydantic models.

Unknown keys are rejected everywhere (``extra="forbid"``), so a typo in a pack fails at
load time. The meaning of each part is documented in README "Writing a rule";
``rulebook.py`` loads, checks and compiles what these models accept.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OVERRIDE_REASON_SYSTEM = "https://example.org/fhir/neuropathic-pain-cds/CodeSystem/override-reason"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ParameterSpec(_Spec):
    default: Any = None
    unit: str | None = None
    description: str
    source: str | None = None


class PatternSpec(_Spec):
    fact: str
    alias: str | None = Field(None, alias="as")
    where: dict[str, Any] = {}


class NoneSpec(_Spec):
    none: PatternSpec


class LinkSpec(_Spec):
    label: str
    url: str


class CodingSpec(_Spec):
    code: str
    display: str
    system: str = OVERRIDE_REASON_SYSTEM


class SuggestionSpec(_Spec):
    kind: str
    label: str
    order: str | dict[str, Any] | None = None  # what to order: inline, or "$parameter"


class CardSpec(_Spec):
    one_per: str | None = None  # alias of the fact that makes one concern: one card per such fact
    subject: str | None = None  # alias suggestions are built for (default: one_per, else the first fact)
    indicator: Literal["info", "warning", "critical"]
    summary: str
    detail: str
    source: LinkSpec
    links: list[LinkSpec] = []
    override_reasons: list[CodingSpec] = []
    suggestions: list[SuggestionSpec] = []


class AssessSpec(_Spec):
    """What an assessment rule concludes: a derived ``assessment`` fact about one bound fact."""

    label: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    subject: str


class RuleSpec(_Spec):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str
    status: Literal["active", "draft", "retired"]
    hooks: list[Literal["order-select", "order-sign", "patient-view"]] = Field(min_length=1)
    description: str
    parameters: dict[str, ParameterSpec] = {}
    variant_set: str | None = None  # variants shared with other rules of the pack
    variants: dict[str, dict[str, Any]] = {}
    when: list[PatternSpec | NoneSpec] = Field(min_length=1)
    card: CardSpec | None = None
    assess: AssessSpec | None = None

    @model_validator(mode="after")
    def _card_or_assessment(self) -> RuleSpec:
        if (self.card is None) == (self.assess is None):
            raise ValueError("a rule has either a 'card' or an 'assess' section")
        return self


class DecisionSpec(_Spec):
    """A recommendation of a source article that is deliberately not (or not fully) automated."""

    source: str
    recommendation: str
    decision: str


class PackSpec(_Spec):
    pack: str
    title: str
    variant_sets: dict[str, dict[str, dict[str, Any]]] = {}
    rules: list[RuleSpec]
    decisions: list[DecisionSpec] = []

    @model_validator(mode="after")
    def _variant_sets_exist(self) -> PackSpec:
        for rule in self.rules:
            if rule.variant_set and rule.variant_set not in self.variant_sets:
                raise ValueError(f"rule {rule.id}: variant_set {rule.variant_set!r} is not defined in variant_sets")
        return self

    def variants_of(self, rule: RuleSpec) -> dict[str, dict[str, Any]]:
        shared = self.variant_sets.get(rule.variant_set, {}) if rule.variant_set else {}
        return {name: {**shared.get(name, {}), **rule.variants.get(name, {})} for name in {**shared, **rule.variants}}


class SiteRuleSettings(_Spec):
    enabled: bool = True
    parameters: dict[str, Any] = {}


class SiteSettings(_Spec):
    rules: dict[str, SiteRuleSettings] = {}
    variant_sets: dict[str, dict[str, dict[str, Any]]] = {}  # variant set -> variant -> parameter values
