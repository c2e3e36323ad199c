"""CDS Hooks 2.0 request and response models (https://cds-hooks.hl7.org/2.0/).

Requests tolerate unknown fields and ``extension`` objects anywhere (``extra="allow"``);
responses are validated on the way out and serialized without null or empty optionals.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator


SUMMARY_MAX_LENGTH = 139  # the spec: "less than 140 characters"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class FhirAuthorization(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#passing-the-access-token-to-the-cds-service

    Only the token is needed to fetch; the other fields the spec requires are accepted when
    missing rather than refusing the whole call.
    """

    access_token: SecretStr  # never printed, logged or stored
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None


class PatientViewContext(_Lenient):
    """https://cds-hooks.hl7.org/hooks/patient-view/"""

    userId: str
    patientId: str
    encounterId: str | None = None


class DraftOrders(_Lenient):
    """A Bundle of draft orders; the reference sandbox omits ``Bundle.type``, which is accepted."""

    resourceType: Literal["Bundle"]
    entry: list[dict[str, Any]] = []


class OrderSignContext(PatientViewContext):
    """https://cds-hooks.hl7.org/hooks/order-sign/"""

    draftOrders: DraftOrders


class OrderSelectContext(OrderSignContext):
    """https://cds-hooks.hl7.org/hooks/order-select/"""

    selections: list[str] = Field(min_length=1)


CONTEXT_MODELS: dict[str, type[PatientViewContext]] = {
    "patient-view": PatientViewContext,
    "order-sign": OrderSignContext,
    "order-select": OrderSelectContext,
}


class HookRequest(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#http-request_1"""

    hook: str
    hookInstance: str
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


# Responses ---------------------------------------------------------------------------


class Indicator(str, Enum):
    info = "info"
    warning = "warning"
    critical = "critical"


class Coding(BaseModel):
    system: str
    code: str
    display: str


class Source(BaseModel):
    label: str
    url: str | None = None


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]


class Action(BaseModel):
    """https://cds-hooks.hl7.org/2.0/#action"""

    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _target_present(self) -> Action:
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action needs a resource")
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action needs a resourceId")
        return self


class Suggestion(BaseModel):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] = Field(min_length=1)


class Card(BaseModel):
    """https://cds-hooks.hl7.org/2.0/#card-attributes"""

    uuid: str | None = None
    summary: str = Field(max_length=SUMMARY_MAX_LENGTH)
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selection_behavior_with_suggestions(self) -> Card:
        if self.suggestions and not self.selectionBehavior:
            raise ValueError("cards with suggestions need a selectionBehavior")
        return self


class HookResponse(BaseModel):
    cards: list[Card]


class ServiceDescription(BaseModel):
    """https://cds-hooks.hl7.org/2.0/#response"""

    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]


class Discovery(BaseModel):
    services: list[ServiceDescription] = Field(min_length=1)


class FeedbackCoding(_Lenient):
    """The override reason as the EHR echoes it: display is optional here."""

    system: str | None = None
    code: str
    display: str | None = None


class OverrideReason(_Lenient):
    reason: FeedbackCoding | None = None
    userComment: str | None = None


class AcceptedSuggestion(_Lenient):
    id: str


class FeedbackEntry(_Lenient):
    """https://cds-hooks.hl7.org/2.0/#feedback"""

    card: str
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] = []
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime


class FeedbackRequest(_Lenient):
    feedback: list[FeedbackEntry] = Field(min_length=1)
