"""The HTTP API as an EHR (or the CDS Hooks sandbox) sees it: discovery, hook calls, errors, FHIR fallback, feedback."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest

from cds_hooks.feedback_store import FeedbackStore
HEADLINE = "order-select-gabapentin-900-duloxetine-30-oxycodone"
ORDER_SELECT = "neuropathic-pain-order-select"
ORDER_SIGN = "neuropathic-pain-order-sign"
PATIENT_VIEW = "neuropathic-pain-patient-view"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
WHY = "neuropathic-pain-cds.why"
GABAPENTIN_RULE = "first-line-inadequate-trial.gabapentin"
DULOXETINE_RULE = "first-line-inadequate-trial.duloxetine"
HEADLINE_PATIENT = "np-pt-1001"
HEADLINE_DRAFT = "MedicationRequest/np-pt-1001-draft-8"
PREFETCH_KEYS = {"patient", "conditions", "medicationStatements", "medicationRequests", "observations",
                 "procedures", "serviceRequests"}


def call(client, body, service: str = ORDER_SELECT):
    return client.post(f"/cds-services/{service}", json=body)


def rule_id(card: dict) -> str:
    return card["extension"][WHY]["ruleId"]


def cards_by_rule(response) -> dict[str, dict]:
    return {rule_id(card): card for card in response.json()["cards"]}


def null_or_empty(value, path: str = "$") -> list[str]:
    """Paths of every null value and every empty list or object, at any depth."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        found = [path] if not value else []
        for key, item in value.items():
            found += null_or_empty(item, f"{path}.{key}")
        return found
    if isinstance(value, list):
        found = [path] if not value else []
        for index, item in enumerate(value):
            found += null_or_empty(item, f"{path}[{index}]")
        return found
    return []


def actions_of(card: dict, kind: str) -> list[dict]:
    return [a for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == kind]


def ordered_daily_mg(resource: dict) -> float:
    """Daily dose of a MedicationRequest written as '<n> mg, <f> times per <p> d'."""
    dosage = resource["dosageInstruction"][0]
    quantity = dosage["doseAndRate"][0]["doseQuantity"]
    repeat = dosage["timing"]["repeat"]
    assert quantity["code"] == "mg" and repeat["periodUnit"] == "d"
    return quantity["value"] * repeat["frequency"] / repeat["period"]


# Discovery ---------------------------------------------------------------------------------


def test_discovery_lists_the_three_services(client):
    """GET /cds-services lists order-select, order-sign and patient-view with the required fields."""
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.json()["services"]
    assert sorted(s["hook"] for s in services) == ["order-select", "order-sign", "patient-view"]
    assert len({s["id"] for s in services}) == 3
    for service in services:
        for field in ("id", "hook", "title", "description"):
            assert isinstance(service[field], str) and service[field].strip(), (service.get("id"), field)


def test_discovery_prefetch_templates(client):
    """Each service prefetches the patient and six searches, all keyed on {{context.patientId}}."""
    expected = {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}",
        "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
        "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
        "observations": "Observation?patient={{context.patientId}}",
        "procedures": "Procedure?patient={{context.patientId}}",
        "serviceRequests": "ServiceRequest?patient={{context.patientId}}",
    }
    for service in client.get("/cds-services").json()["services"]:
        prefetch = service["prefetch"]
        assert set(prefetch) == PREFETCH_KEYS, service["id"]
        for key, template in expected.items():
            assert prefetch[key].startswith(template), (service["id"], key, prefetch[key])


def test_discovery_has_no_null_or_empty_values(client):
    """The discovery document carries no null values (nor empty lists/objects) anywhere."""
    assert null_or_empty(client.get("/cds-services").json()) == []


# The headline case --------------------------------------------------------------------------


@pytest.fixture
def headline(client, fixture_request):
    response = call(client, fixture_request(HEADLINE))
    assert response.status_code == 200, response.text
    return response


def test_headline_fires_gabapentin_and_duloxetine_only(headline):
    """Gabapentin 900 mg/day and duloxetine 30 mg/day, oxycodone selected: exactly those two cards."""
    cards = headline.json()["cards"]
    assert len(cards) == 2
    assert sorted(rule_id(c) for c in cards) == sorted([GABAPENTIN_RULE, DULOXETINE_RULE])


def test_headline_cards_are_complete(headline):
    """Each card has a short summary, indicator, source label+url, uuid, absolute links and coded override reasons."""
    for card in headline.json()["cards"]:
        assert 0 < len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"].strip()
        assert card["source"]["url"].startswith("https://")
        uuid.UUID(card["uuid"])
        assert card["links"]
        for link in card["links"]:
            assert link["type"] == "absolute" and link["label"].strip() and link["url"].startswith("http")
        assert card["overrideReasons"]
        for reason in card["overrideReasons"]:
            assert reason["system"].strip() and reason["code"].strip() and reason["display"].strip()
        assert card["selectionBehavior"] in ("at-most-one", "any")
    assert len({card["uuid"] for card in headline.json()["cards"]}) == 2


def test_headline_summaries_quote_the_patients_doses(headline):
    """The summary states the dose this patient actually reached, not just the target."""
    cards = cards_by_rule(headline)
    assert "900 mg/day" in cards[GABAPENTIN_RULE]["summary"]
    assert "30 mg/day" in cards[DULOXETINE_RULE]["summary"]


@pytest.mark.parametrize(("rule", "reached_mg", "restart_mg"), [
    (GABAPENTIN_RULE, 900, 300),
    (DULOXETINE_RULE, 30, 30),
])
def test_headline_create_suggestion_restarts_titration(headline, rule, reached_mg, restart_mg):
    """The stopped drug's create action is a valid R4 MedicationRequest for this patient that restarts
    titration at the first step (never at or above the dose it was stopped at) toward the target."""
    card = cards_by_rule(headline)[rule]
    creates = actions_of(card, "create")
    assert len(creates) == 1
    resource = creates[0]["resource"]
    MedicationRequest.model_validate(resource)
    assert resource["resourceType"] == "MedicationRequest"
    assert resource["subject"]["reference"] == f"Patient/{HEADLINE_PATIENT}"
    assert creates[0]["description"].strip()
    daily = ordered_daily_mg(resource)
    assert daily <= reached_mg
    assert daily == restart_mg
    assert "then titrate toward" in resource["dosageInstruction"][0]["text"]
    ingredient = rule.rsplit(".", 1)[1]
    coding = resource["medicationCodeableConcept"]["coding"][0]
    assert coding["system"] == RXNORM and ingredient in coding["display"].lower(), coding


def test_headline_delete_suggestion_removes_the_selected_draft(headline):
    """The delete action targets the selected oxycodone draft order, by MedicationRequest/<id>."""
    for card in headline.json()["cards"]:
        deletes = actions_of(card, "delete")
        assert [a["resourceId"] for a in deletes] == [HEADLINE_DRAFT]
        assert "resource" not in deletes[0]
        for suggestion in card["suggestions"]:
            uuid.UUID(suggestion["uuid"])
            assert suggestion["label"].strip()


def test_headline_response_has_no_null_or_empty_values(headline):
    """No key anywhere in the hook response is null, an empty list or an empty object."""
    assert null_or_empty(headline.json()) == []


def test_hook_response_has_server_timing(headline):
    """The hook response carries a Server-Timing header with the server-side duration."""
    assert re.fullmatch(r"app;dur=\d+(\.\d+)?", headline.headers["server-timing"])


# Other cases -------------------------------------------------------------------------------


def test_titrated_correctly_gets_no_trial_card(warm_client, fixture_request):
    """Gabapentin titrated to 2400 mg/day and duloxetine 60 mg/day, combined, oxycodone selected:
    no trial card; the next step offered is the pain specialist."""
    response = call(warm_client, fixture_request("order-select-titrated-correctly-oxycodone"))
    assert response.status_code == 200, response.text
    fired = list(cards_by_rule(response))
    assert not [rule for rule in fired if rule.startswith("first-line-")]
    assert "pain-specialist-referral" in fired


def test_first_call_without_cards_does_not_crash_the_service(fresh_service, fixture_request):
    """A newly started service whose first call yields no card answers 200, and keeps serving."""
    run = fresh_service([(ORDER_SELECT, fixture_request("order-select-non-opioid-selected")),
                         (ORDER_SELECT, fixture_request(HEADLINE))])
    assert run.returncode == 0, f"service process died ({run.returncode}): {run.stderr}"
    assert run.responses[0] == {"status": 200, "body": {"cards": []}}
    assert run.responses[1]["status"] == 200 and len(run.responses[1]["body"]["cards"]) == 2


def test_patient_view_with_no_data_answers_no_cards(fresh_service, fixture_request):
    """patient-view with every prefetch key null ("no data") answers 200 with no cards."""
    body = fixture_request("patient-view-active-oxycodone-gabapentin-600")
    body["prefetch"] = {key: None for key in body["prefetch"]}
    run = fresh_service([(ORDER_SELECT, fixture_request(HEADLINE)), (PATIENT_VIEW, body)])
    assert run.returncode == 0, f"service process died ({run.returncode}): {run.stderr}"
    assert run.responses[1] == {"status": 200, "body": {"cards": []}}


def test_patient_view_through_its_service(client, fixture_request):
    """The patient-view fixture answers through the patient-view service with the gabapentin card."""
    response = call(client, fixture_request("patient-view-active-oxycodone-gabapentin-600"), PATIENT_VIEW)
    assert response.status_code == 200, response.text
    cards = cards_by_rule(response)
    assert GABAPENTIN_RULE in cards
    assert "600 mg/day" in cards[GABAPENTIN_RULE]["summary"]
    assert null_or_empty(response.json()) == []
    # patient-view has no draft: nothing may propose deleting an active order from the record
    assert all(not actions_of(card, "delete") for card in response.json()["cards"])


def test_order_sign_fixture_through_its_service(client, fixture_request):
    """The order-sign fixture (no selections) answers through the order-sign service."""
    response = call(client, fixture_request("order-sign-gabapentin-1800-only-10-days-tramadol"), ORDER_SIGN)
    assert response.status_code == 200, response.text
    assert GABAPENTIN_RULE in cards_by_rule(response)


# Errors ------------------------------------------------------------------------------------


def _drop(body: dict, *path: str) -> dict:
    target = body
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return body


def _set(body: dict, path: tuple, value) -> dict:
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


def test_malformed_json_is_400(client):
    """A body that is not JSON answers 400 with 'malformed JSON' in error."""
    response = client.post(f"/cds-services/{ORDER_SELECT}", content=b'{"hook": "order-select",',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]


@pytest.mark.parametrize("body", [b"[]", b'"order-select"', b"42", b"null"])
def test_body_that_is_not_an_object_is_400(client, body):
    """A JSON body that is not an object answers 400."""
    response = client.post(f"/cds-services/{ORDER_SELECT}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.parametrize(("path", "named"), [
    (("hookInstance",), "hookInstance"),
    (("hook",), "hook"),
    (("context",), "context"),
    (("context", "patientId"), "context.patientId"),
    (("context", "draftOrders"), "draftOrders"),
    (("context", "selections"), "selections"),
])
def test_missing_required_field_is_400_naming_it(client, fixture_request, path, named):
    """A request missing a required field answers 400 and names the field."""
    response = call(client, _drop(fixture_request(HEADLINE), *path))
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_hook_mismatch_is_400(client, fixture_request):
    """A patient-view request sent to the order-select service answers 400."""
    response = call(client, fixture_request("patient-view-active-oxycodone-gabapentin-600"), ORDER_SELECT)
    assert response.status_code == 400
    assert "patient-view" in response.json()["error"]


def test_unknown_service_is_404(client, fixture_request):
    """Calling, or sending feedback to, an unknown service id answers 404."""
    assert client.post("/cds-services/no-such-service", json=fixture_request(HEADLINE)).status_code == 404
    feedback = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted",
                              "outcomeTimestamp": "2026-11-01T10:00:00Z"}]}
    assert client.post("/cds-services/no-such-service/feedback", json=feedback).status_code == 404


@pytest.mark.parametrize(("key", "locate"), [
    ("conditions", lambda p: p["conditions"]["entry"][0]["resource"]),
    ("medicationRequests", lambda p: p["medicationRequests"]["entry"][0]["resource"]),
    ("medicationStatements", lambda p: p["medicationStatements"]["entry"][0]["resource"]),
    ("observations", lambda p: p["observations"]["entry"][0]["resource"]),
])
def test_prefetch_for_another_patient_is_400(client, fixture_request, key, locate):
    """A prefetched resource whose subject is another patient answers 400, never cards."""
    body = fixture_request(HEADLINE)
    locate(body["prefetch"])["subject"]["reference"] = "Patient/somebody-else"
    response = call(client, body)
    assert response.status_code == 400
    assert "cards" not in response.json()
    assert key in response.json()["error"]


def test_prefetched_patient_resource_for_another_patient_is_400(client, fixture_request):
    """A prefetched Patient with another id answers 400, never cards."""
    body = fixture_request(HEADLINE)
    body["prefetch"]["patient"]["id"] = "somebody-else"
    response = call(client, body)
    assert response.status_code == 400
    assert "cards" not in response.json()


def test_prefetched_subject_that_is_not_a_reference_is_400(warm_client, fixture_request):
    """A prefetched resource whose subject is a bare string ('Patient/other') is rejected, never used for cards."""
    body = fixture_request(HEADLINE)
    body["prefetch"]["conditions"]["entry"][0]["resource"]["subject"] = "Patient/somebody-else"
    response = call(warm_client, body)
    assert response.status_code == 400
    assert "cards" not in response.json()


def test_selection_not_among_draft_orders_is_400(client, fixture_request):
    """order-select whose selections name a draft that is not in draftOrders is rejected, naming it."""
    body = fixture_request(HEADLINE)
    body["context"]["selections"] = ["MedicationRequest/not-a-draft"]
    response = call(client, body)
    assert response.status_code == 400
    assert "MedicationRequest/not-a-draft" in response.json()["error"]


def test_missing_prefetch_without_fhir_server_is_412(client, fixture_request):
    """Prefetch keys missing and no fhirServer to fetch them from: 412 naming the keys."""
    body = fixture_request(HEADLINE)
    del body["prefetch"]["conditions"], body["prefetch"]["observations"], body["fhirServer"]
    response = call(client, body)
    assert response.status_code == 412
    error = response.json()["error"]
    assert "conditions" in error and "observations" in error
    assert "medicationRequests" not in error


_MALFORMED = {
    "context is a list": lambda b: _set(b, ("context",), [b["context"]]),
    "context is a string": lambda b: _set(b, ("context",), "np-pt-1001"),
    "selections is a string": lambda b: _set(b, ("context", "selections"), HEADLINE_DRAFT),
    "selections is empty": lambda b: _set(b, ("context", "selections"), []),
    "draftOrders is a string": lambda b: _set(b, ("context", "draftOrders"), "Bundle"),
    "draftOrders is not a Bundle": lambda b: _set(b, ("context", "draftOrders", "resourceType"), "Patient"),
    "draftOrders.entry is an object": lambda b: _set(b, ("context", "draftOrders", "entry"), {"resource": {}}),
    "draftOrders.entry holds a string": lambda b: _set(b, ("context", "draftOrders", "entry"), ["x"]),
    "patientId is a number": lambda b: _set(b, ("context", "patientId"), 1001),
    "prefetch is a list": lambda b: _set(b, ("prefetch",), []),
    "fhirAuthorization lacks access_token": lambda b: _drop(b, "fhirAuthorization", "access_token"),
    "hook is a number": lambda b: _set(b, ("hook",), 7),
    "draftOrders.entry[0].resource is a string": lambda b: _set(b, ("context", "draftOrders", "entry"), [{"resource": "x"}]),
    "prefetched dosageInstruction is a string": lambda b: _set(
        b, ("prefetch", "medicationRequests", "entry", 0, "resource", "dosageInstruction"), "as directed"),
    "prefetched Condition.code.coding is a string": lambda b: _set(
        b, ("prefetch", "conditions", "entry", 0, "resource", "code", "coding"), "E11.42"),
    "prefetched Patient.birthDate is a number": lambda b: _set(b, ("prefetch", "patient", "birthDate"), 1960),
}


@pytest.mark.parametrize("mutate", list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_malformed_request_is_a_client_error_never_500(warm_client, fixture_request, mutate):
    """A structurally wrong request answers 4xx with an error message, never 500."""
    response = call(warm_client, mutate(fixture_request(HEADLINE)))
    assert response.status_code != 500
    assert 400 <= response.status_code < 500
    assert response.json()["error"]


# Tolerance ---------------------------------------------------------------------------------


def _untyped_draft_orders(body: dict) -> dict:
    del body["context"]["draftOrders"]["type"]
    return body


def _unknown_fields(body: dict) -> dict:
    body["ehrTraceId"] = "trace-123"
    body["somethingNew"] = {"nested": [1, 2]}
    body["context"]["futureContextField"] = "x"
    body["fhirAuthorization"]["patient"] = HEADLINE_PATIENT
    return body


def _extensions(body: dict) -> dict:
    body["extension"] = {"org.example.ehr": {"site": "A"}}
    body["context"]["extension"] = {"org.example.ehr.context": {"department": "Endocrinology"}}
    body["fhirAuthorization"]["extension"] = {"org.example.auth": {"aud": "x"}}
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["extension"] = [{"url": "https://ehr.example.org/fhir/StructureDefinition/order-origin",
                           "valueString": "order-set"}]
    body["context"]["draftOrders"]["extension"] = [{"url": "https://ehr.example.org/x", "valueBoolean": True}]
    return body


def _null_prefetch_keys(body: dict) -> dict:
    body["prefetch"]["procedures"] = None
    body["prefetch"]["serviceRequests"] = None
    return body


def _operation_outcomes(body: dict) -> dict:
    outcome = {"resourceType": "OperationOutcome", "id": "oo-1", "issue": [
        {"severity": "warning", "code": "incomplete", "diagnostics": "some results were suppressed"}]}
    for key in ("conditions", "medicationRequests", "procedures"):
        body["prefetch"][key].setdefault("entry", []).append({"resource": outcome, "search": {"mode": "outcome"}})
    return body


@pytest.mark.parametrize("mutate", [_untyped_draft_orders, _unknown_fields, _extensions, _null_prefetch_keys,
                                    _operation_outcomes], ids=lambda f: f.__name__.strip("_"))
def test_tolerated_variations_still_answer(client, fixture_request, mutate):
    """Sandbox/EHR variations the spec allows answer 200 with the same two cards."""
    response = call(client, mutate(fixture_request(HEADLINE)))
    assert response.status_code == 200, response.text
    assert sorted(cards_by_rule(response)) == sorted([GABAPENTIN_RULE, DULOXETINE_RULE])
    assert null_or_empty(response.json()) == []


def test_protocol_edge_cases_fixture_answers(client, fixture_request):
    """The protocol-edge-cases fixture (untyped draftOrders, outcomes, nulls, extensions) answers its cards."""
    response = call(client, fixture_request("order-select-protocol-edge-cases"))
    assert response.status_code == 200, response.text
    assert {GABAPENTIN_RULE, DULOXETINE_RULE} <= set(cards_by_rule(response))


# FHIR server fallback ----------------------------------------------------------------------


_SEARCH_KEYS = {"Condition": "conditions", "MedicationStatement": "medicationStatements",
                "MedicationRequest": "medicationRequests", "Observation": "observations",
                "Procedure": "procedures", "ServiceRequest": "serviceRequests"}


class FakeFhirServer:
    """A real HTTP FHIR server on 127.0.0.1 serving one patient's prefetch content."""

    def __init__(self, prefetch: dict, patient_id: str, fail_with: int | None = None) -> None:
        self.prefetch, self.patient_id, self.fail_with = prefetch, patient_id, fail_with
        self.seen: list[tuple[str, str | None]] = []  # (path with query, Authorization header)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                fake.seen.append((self.path, self.headers.get("Authorization")))
                status, body = fake.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def answer(self, raw_path: str) -> tuple[int, dict]:
        if self.fail_with:
            return self.fail_with, {"resourceType": "OperationOutcome",
                                    "issue": [{"severity": "error", "code": "exception"}]}
        parts = urlsplit(raw_path)
        segments = parts.path.removeprefix("/fhir/").split("/")
        query = parse_qs(parts.query)
        if segments == ["Patient", self.patient_id]:
            return 200, self.prefetch["patient"]
        if len(segments) == 1 and segments[0] in _SEARCH_KEYS and query.get("patient") == [self.patient_id]:
            return 200, self.prefetch[_SEARCH_KEYS[segments[0]]]
        return 404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}

    def __enter__(self) -> FakeFhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _expected_path(template: str, patient_id: str) -> str:
    return "/fhir/" + template.replace("{{context.patientId}}", patient_id)


@pytest.fixture
def token() -> str:
    return f"test-bearer-{uuid.uuid4().hex}"


def _fetching_request(fixture_request, server: FakeFhirServer, token: str, keep: set[str] | None = None) -> dict:
    body = fixture_request(HEADLINE)
    body["fhirServer"] = server.base
    body["fhirAuthorization"]["access_token"] = token
    if keep is None:
        del body["prefetch"]
    else:
        body["prefetch"] = {key: value for key, value in body["prefetch"].items() if key in keep}
    return body


@pytest.fixture
def templates(client) -> dict[str, str]:
    return next(s for s in client.get("/cds-services").json()["services"] if s["id"] == ORDER_SELECT)["prefetch"]


def test_fetches_everything_from_fhir_server_without_prefetch(client, fixture_request, token, templates):
    """No prefetch at all: the 7 template queries go to fhirServer with the bearer token; same two cards."""
    prefetch = fixture_request(HEADLINE)["prefetch"]
    with FakeFhirServer(prefetch, HEADLINE_PATIENT) as server:
        response = call(client, _fetching_request(fixture_request, server, token))
    assert response.status_code == 200, response.text
    assert sorted(cards_by_rule(response)) == sorted([GABAPENTIN_RULE, DULOXETINE_RULE])
    assert sorted(path for path, _ in server.seen) == sorted(
        _expected_path(t, HEADLINE_PATIENT) for t in templates.values())
    assert len(server.seen) == 7
    assert all(auth == f"Bearer {token}" for _, auth in server.seen)


def test_fetches_only_the_missing_prefetch_keys(client, fixture_request, token, templates):
    """Partial prefetch (conditions and observations left out): only those two queries are fetched."""
    prefetch = fixture_request(HEADLINE)["prefetch"]
    keep = set(prefetch) - {"conditions", "observations"}
    with FakeFhirServer(prefetch, HEADLINE_PATIENT) as server:
        response = call(client, _fetching_request(fixture_request, server, token, keep))
    assert response.status_code == 200, response.text
    assert sorted(cards_by_rule(response)) == sorted([GABAPENTIN_RULE, DULOXETINE_RULE])
    assert sorted(path for path, _ in server.seen) == sorted(
        _expected_path(templates[key], HEADLINE_PATIENT) for key in ("conditions", "observations"))
    assert all(auth == f"Bearer {token}" for _, auth in server.seen)


def test_fhir_server_error_is_412(client, fixture_request, token):
    """A FHIR server answering 500 makes the data unavailable: 412, and the token is not echoed."""
    with FakeFhirServer({}, HEADLINE_PATIENT, fail_with=500) as server:
        response = call(client, _fetching_request(fixture_request, server, token))
    assert server.seen, "the service never called the FHIR server"
    assert response.status_code == 412
    assert response.json()["error"]
    assert token not in response.text


def test_fetched_resource_for_another_patient_is_400(client, fixture_request, token):
    """A FHIR server returning another patient's resource answers 400, never cards."""
    prefetch = fixture_request(HEADLINE)["prefetch"]
    prefetch["medicationRequests"]["entry"][0]["resource"]["subject"]["reference"] = "Patient/somebody-else"
    with FakeFhirServer(prefetch, HEADLINE_PATIENT) as server:
        response = call(client, _fetching_request(fixture_request, server, token))
    assert response.status_code == 400
    assert "cards" not in response.json()


def test_access_token_is_never_logged_nor_stored(client, settings, fixture_request, token, caplog, tmp_path):
    """Over fetches, a failing server and feedback, the token is in no log record and not in the database file."""
    caplog.set_level(logging.DEBUG)
    prefetch = fixture_request(HEADLINE)["prefetch"]
    with FakeFhirServer(prefetch, HEADLINE_PATIENT) as server:
        response = call(client, _fetching_request(fixture_request, server, token))
        partial = call(client, _fetching_request(fixture_request, server, token, set(prefetch) - {"conditions"}))
    with FakeFhirServer({}, HEADLINE_PATIENT, fail_with=500) as failing:
        failed = call(client, _fetching_request(fixture_request, failing, token))
    assert (response.status_code, partial.status_code, failed.status_code) == (200, 200, 412)
    cards = response.json()["cards"]
    feedback = {"feedback": [{"card": c["uuid"], "outcome": "accepted",
                              "outcomeTimestamp": "2026-11-01T10:00:00Z"} for c in cards]}
    assert client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=feedback).status_code == 200

    assert caplog.records, "nothing was logged: the check would be vacuous"
    for record in caplog.records:
        assert token not in record.getMessage(), record.name
        assert token not in repr(record.args), record.name
    assert token not in caplog.text

    store = FeedbackStore(settings.database_url)
    try:
        assert store.feedback_for_card(cards[0]["uuid"])[0].rule_id == rule_id(cards[0])
    finally:
        store.close()
    db_files = list(tmp_path.glob("fb.db*"))
    assert db_files and sum(f.stat().st_size for f in db_files) > 0
    for db_file in db_files:
        assert token.encode() not in db_file.read_bytes(), db_file.name


# Feedback ----------------------------------------------------------------------------------


def test_feedback_is_stored_with_rule_id_and_version(client, settings, fixture_request):
    """Overridden and accepted feedback on issued cards is stored with the card's rule id and version."""
    cards = cards_by_rule(call(client, fixture_request(HEADLINE)))
    overridden, accepted = cards[GABAPENTIN_RULE], cards[DULOXETINE_RULE]
    reason = overridden["overrideReasons"][1]
    suggestion = next(s for s in accepted["suggestions"] if s["actions"][0]["type"] == "create")
    body = {"feedback": [
        {"card": overridden["uuid"], "outcome": "overridden",
         "overrideReason": {"reason": reason, "userComment": "Titrated at another clinic"},
         "outcomeTimestamp": "2026-11-01T10:00:00Z"},
        {"card": accepted["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion["uuid"]}],
         "outcomeTimestamp": "2026-11-01T10:05:00+01:00"},
    ]}
    response = client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=body)
    assert response.status_code == 200, response.text

    store = FeedbackStore(settings.database_url)
    try:
        [first] = store.feedback_for_card(overridden["uuid"])
        [second] = store.feedback_for_card(accepted["uuid"])
    finally:
        store.close()
    assert (first.rule_id, first.rule_version) == (GABAPENTIN_RULE, overridden["extension"][WHY]["ruleVersion"])
    assert (second.rule_id, second.rule_version) == (DULOXETINE_RULE, accepted["extension"][WHY]["ruleVersion"])
    assert first.rule_version and second.rule_version
    assert first.outcome == "overridden" and first.service_id == ORDER_SELECT
    assert first.override_reason["reason"]["code"] == reason["code"]
    assert first.override_reason["userComment"] == "Titrated at another clinic"
    assert first.outcome_timestamp == datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    assert second.outcome == "accepted" and second.accepted_suggestions == [suggestion["uuid"]]
    assert second.outcome_timestamp == datetime(2026, 11, 1, 9, 5, tzinfo=UTC)


def test_feedback_override_reason_without_display_is_accepted(client, settings, fixture_request):
    """An override reason echoed as code and system only (as in the spec's example) is stored."""
    card = call(client, fixture_request(HEADLINE)).json()["cards"][0]
    reason = {key: card["overrideReasons"][0][key] for key in ("code", "system")}
    body = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "overrideReason": {"reason": reason},
                          "outcomeTimestamp": "2026-11-01T10:00:00Z"}]}
    assert client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=body).status_code == 200
    store = FeedbackStore(settings.database_url)
    try:
        assert store.feedback_for_card(card["uuid"])[0].override_reason == {"reason": reason}
    finally:
        store.close()


@pytest.mark.parametrize("feedback", [
    pytest.param([{"card": "CARD", "outcome": "maybe", "outcomeTimestamp": "2026-11-01T10:00:00Z"}], id="outcome-maybe"),
    pytest.param([{"card": "CARD", "outcome": "accepted", "outcomeTimestamp": "2026-11-01T10:00:00"}], id="naive-timestamp"),
    pytest.param([{"card": "CARD", "outcome": "accepted"}], id="no-timestamp"),
    pytest.param([{"outcome": "accepted", "outcomeTimestamp": "2026-11-01T10:00:00Z"}], id="no-card"),
    pytest.param([], id="empty-list"),
    pytest.param("accepted", id="not-a-list"),
])
def test_invalid_feedback_is_400_and_not_stored(client, settings, fixture_request, feedback):
    """Feedback with an unknown outcome, a naive or missing timestamp, or nothing in it answers 400 and stores nothing."""
    card = call(client, fixture_request(HEADLINE)).json()["cards"][0]
    body = {"feedback": json.loads(json.dumps(feedback).replace("CARD", card["uuid"]))}
    response = client.post(f"/cds-services/{ORDER_SELECT}/feedback", json=body)
    assert response.status_code == 400
    assert response.json()["error"]
    store = FeedbackStore(settings.database_url)
    try:
        assert store.feedback_for_card(card["uuid"]) == []
    finally:
        store.close()


def test_malformed_feedback_json_is_400(client):
    """Feedback that is not JSON answers 400."""
    response = client.post(f"/cds-services/{ORDER_SELECT}/feedback", content=b"{feedback",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]


# CORS --------------------------------------------------------------------------------------


def test_cors_preflight_is_allowed(client):
    """A browser preflight (OPTIONS with Origin and Access-Control-Request-Method) is allowed."""
    origin = "https://sandbox.cds-hooks.org"
    response = client.options(f"/cds-services/{ORDER_SELECT}", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", origin)
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers


def test_cors_headers_on_discovery(client):
    """A cross-origin GET of the discovery endpoint gets an Access-Control-Allow-Origin header."""
    origin = "https://sandbox.cds-hooks.org"
    response = client.get("/cds-services", headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", origin)

