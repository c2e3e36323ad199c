"""Every case under fhir_fixtures/ answers with the cards it expects and none it forbids."""

from __future__ import annotations

from collections import Counter

import pytest
from fhir.resources.R4B import get_fhir_model_class

from cds_hooks import pipeline
from cds_hooks.fixtures import all_fixtures, fired_rule_ids
from cds_hooks.runtime import load_runtime
from cds_hooks.services import SERVICES
from cds_hooks.settings import Settings

FIXTURES = all_fixtures()


@pytest.fixture(scope="module")
def runtime():
    runtime = load_runtime(Settings(), with_store=False)
    yield runtime
    runtime.close()


def test_the_corpus_is_not_empty():
    """A broken fixtures path must not pass as 'no cases'."""
    assert len(FIXTURES) >= 12


def empty_values(value, path: str = "$") -> list[str]:
    """Paths of every null, empty string, empty list or empty object, at any depth."""
    if value is None or value in ("", [], {}):
        return [path]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in empty_values(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in empty_values(item, f"{path}[{i}]")]
    return []


@pytest.mark.parametrize("case", FIXTURES, ids=lambda case: case.name)
def test_fixture_cards(case, runtime):
    """Expected rule ids fire exactly once each; forbidden ones never; no optional field is null or empty."""
    request = pipeline.parse_request(case.request, SERVICES[case.service_id])
    response = pipeline.answer(runtime, request, case.as_of)
    for card in response.model_dump(mode="json", exclude_none=True)["cards"]:
        assert not empty_values(card), card["summary"]
    fired = Counter(fired_rule_ids(response))
    assert {rule: fired[rule] for rule in case.expected} == {rule: 1 for rule in case.expected}
    assert not set(case.forbidden) & set(fired), f"forbidden cards fired: {set(case.forbidden) & set(fired)}"


@pytest.mark.parametrize("case", FIXTURES, ids=lambda case: case.name)
def test_fixture_resources_are_valid_r4(case):
    """Fixtures are what an EHR sends: every resource parses as FHIR R4 (R4B models)."""
    resources = [entry["resource"] for entry in case.request["context"].get("draftOrders", {}).get("entry", [])]
    for value in (case.request.get("prefetch") or {}).values():
        if value and value.get("resourceType") == "Bundle":
            resources += [entry["resource"] for entry in value.get("entry", [])]
        elif value:
            resources.append(value)
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
