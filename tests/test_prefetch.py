"""Tests for cds_hooks.prefetch: prefetch unpacking, FHIR fetching, patient safety."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from cds_hooks import prefetch as pf
from cds_hooks.prefetch import (
    PREFETCH_TEMPLATES, DataUnavailable, WrongPatient, render_query, resolve_prefetch,
)

PID = "p1"
CONTEXT = {"userId": "Practitioner/u1", "patientId": PID}
FHIR = "https://ehr.example/fhir/"
TOKEN = "s3cr3t-token-value"


def patient(pid: str = PID) -> dict:
    return {"resourceType": "Patient", "id": pid}


def resource(kind: str, rid: str, pid: str = PID, field: str = "subject") -> dict:
    return {"resourceType": kind, "id": rid, field: {"reference": f"Patient/{pid}"}}


def bundle(*resources: dict, next_url: str | None = None) -> dict:
    out: dict = {"resourceType": "Bundle", "type": "searchset",
                 "entry": [{"resource": r} for r in resources]}
    if next_url:
        out["link"] = [{"relation": "self", "url": "x"}, {"relation": "next", "url": next_url}]
    return out


def full_prefetch() -> dict:
    return {
        "patient": patient(),
        "conditions": bundle(resource("Condition", "c1")),
        "medicationStatements": bundle(resource("MedicationStatement", "ms1")),
        "medicationRequests": bundle(resource("MedicationRequest", "mr1")),
        "observations": bundle(resource("Observation", "o1")),
        "procedures": bundle(resource("Procedure", "pr1")),
        "serviceRequests": bundle(resource("ServiceRequest", "sr1")),
    }


def no_network() -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        pytest.fail(f"unexpected FHIR request: {request.url}")
    return httpx.Client(transport=httpx.MockTransport(handler))


def resolve(prefetch: dict | None, client: httpx.Client, fhir_server: str | None = FHIR,
            token: str | None = TOKEN) -> dict[str, list[dict]]:
    return resolve_prefetch(context=CONTEXT, prefetch=prefetch, fhir_server=fhir_server,
                            access_token=token, client=client)


class Recorder:
    """MockTransport handler serving canned responses by URL and recording requests."""

    def __init__(self, routes: dict[str, object]):
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get(str(request.url), httpx.Response(404))
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    @property
    def urls(self) -> list[str]:
        return [str(r.url) for r in self.requests]


def test_full_prefetch_is_used_without_fetching():
    """A complete prefetch yields every key's resources and makes no HTTP request."""
    result = resolve(full_prefetch(), no_network())
    assert set(result) == set(PREFETCH_TEMPLATES)
    assert result["patient"] == [patient()]
    assert [r["id"] for r in result["conditions"]] == ["c1"]
    assert [r["id"] for r in result["serviceRequests"]] == ["sr1"]


def test_null_key_means_no_data_and_is_not_fetched():
    """A prefetch key sent as null becomes [] and is not fetched."""
    data = full_prefetch() | {"procedures": None}
    assert resolve(data, no_network())["procedures"] == []


def test_bundle_without_entry_is_empty():
    """A searchset Bundle with no entry becomes []."""
    data = full_prefetch() | {"observations": {"resourceType": "Bundle", "type": "searchset"}}
    assert resolve(data, no_network())["observations"] == []


def test_operation_outcome_entries_are_skipped_with_warning(caplog):
    """OperationOutcome entries are dropped, logged as warnings, and never fail the call."""
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "warning", "code": "incomplete", "diagnostics": "partial"}]}
    data = full_prefetch() | {"conditions": bundle(resource("Condition", "c1"), outcome),
                              "procedures": outcome}
    with caplog.at_level(logging.WARNING, logger="cds_hooks.prefetch"):
        result = resolve(data, no_network())
    assert [r["id"] for r in result["conditions"]] == ["c1"]
    assert result["procedures"] == []
    assert "partial" in caplog.text


def test_partial_prefetch_fetches_exactly_the_missing_keys():
    """Absent keys, and only those, are fetched with the bearer token and FHIR Accept header."""
    data = full_prefetch()
    del data["conditions"], data["observations"]
    base = FHIR.rstrip("/")
    server = Recorder({
        f"{base}/Condition?patient={PID}": bundle(resource("Condition", "c9")),
        f"{base}/Observation?patient={PID}&category=laboratory": bundle(),
    })
    result = resolve(data, server.client())
    assert server.urls == [f"{base}/Condition?patient={PID}",
                           f"{base}/Observation?patient={PID}&category=laboratory"]
    for request in server.requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/fhir+json"
    assert [r["id"] for r in result["conditions"]] == ["c9"]
    assert result["observations"] == []
    assert result["patient"] == [patient()]


def test_absent_prefetch_fetches_everything_without_token():
    """With no prefetch at all every key is fetched; no Authorization header without a token."""
    base = FHIR.rstrip("/")
    routes: dict[str, object] = {f"{base}/{render_query(t, CONTEXT)}": bundle()
                                 for t in PREFETCH_TEMPLATES.values()}
    routes[f"{base}/Patient/{PID}"] = patient()
    server = Recorder(routes)
    result = resolve(None, server.client(), token=None)
    assert len(server.requests) == len(PREFETCH_TEMPLATES)
    assert all("Authorization" not in r.headers for r in server.requests)
    assert result["patient"] == [patient()]


def test_paging_follows_next_links():
    """Searchset bundles are followed through their next links and concatenated."""
    data = full_prefetch()
    del data["conditions"]
    page2 = f"{FHIR}Condition?patient={PID}&page=2"
    server = Recorder({
        f"{FHIR}Condition?patient={PID}": bundle(resource("Condition", "c1"), next_url=page2),
        page2: bundle(resource("Condition", "c2")),
    })
    result = resolve(data, server.client())
    assert [r["id"] for r in result["conditions"]] == ["c1", "c2"]
    assert server.urls[-1] == page2
    assert server.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_too_many_pages_is_data_unavailable(monkeypatch):
    """A search whose next links exceed MAX_PAGES raises DataUnavailable."""
    monkeypatch.setattr(pf, "MAX_PAGES", 3)
    data = full_prefetch()
    del data["conditions"]
    loop = f"{FHIR}Condition?patient={PID}"
    server = Recorder({loop: bundle(resource("Condition", "c1"), next_url=loop)})
    with pytest.raises(DataUnavailable, match="more than 3 pages"):
        resolve(data, server.client())
    assert len(server.requests) == 3


def test_next_link_to_another_host_is_refused():
    """A next link outside fhirServer is not followed, so the token never leaves the EHR."""
    data = full_prefetch()
    del data["conditions"]
    server = Recorder({f"{FHIR}Condition?patient={PID}":
                       bundle(resource("Condition", "c1"), next_url="https://evil.example/x")})
    with pytest.raises(DataUnavailable, match="outside the fhirServer"):
        resolve(data, server.client())
    assert len(server.requests) == 1


def test_missing_keys_without_fhir_server_names_them():
    """Absent keys with no fhirServer raise DataUnavailable listing the keys."""
    data = full_prefetch()
    del data["conditions"], data["procedures"]
    with pytest.raises(DataUnavailable) as err:
        resolve(data, no_network(), fhir_server=None)
    assert str(err.value) == ("prefetch keys not provided and no fhirServer to fetch them from: "
                              "conditions, procedures")


@pytest.mark.parametrize("answer, cause", [
    (httpx.Response(500, text="boom"), "HTTP 500"),
    (httpx.ReadTimeout("timed out"), "timed out"),
    (httpx.ConnectError("connection refused"), "ConnectError"),
    (httpx.Response(200, text="<html>not json</html>"), "not JSON"),
])
def test_fetch_failures_are_data_unavailable(answer, cause):
    """Server errors, timeouts, connection errors and non-JSON raise DataUnavailable naming key and cause."""
    data = full_prefetch()
    del data["conditions"]
    server = Recorder({f"{FHIR}Condition?patient={PID}": answer})
    with pytest.raises(DataUnavailable) as err:
        resolve(data, server.client())
    assert "could not fetch 'conditions' from the FHIR server" in str(err.value)
    assert cause in str(err.value)


def test_patient_read_404_is_data_unavailable():
    """A 404 on the Patient read raises DataUnavailable."""
    data = full_prefetch()
    del data["patient"]
    with pytest.raises(DataUnavailable, match="'patient'.*404"):
        resolve(data, Recorder({}).client())


def test_token_never_in_messages_or_logs(caplog):
    """The access token appears in neither exception messages nor any captured log line."""
    data = full_prefetch()
    del data["conditions"], data["procedures"]
    base = FHIR.rstrip("/")
    echo = httpx.ConnectError(f"refused with Bearer {TOKEN}")  # a cause that echoes the token
    server = Recorder({f"{base}/Condition?patient={PID}": bundle(resource("Condition", "c1")),
                       f"{base}/Procedure?patient={PID}": echo})
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DataUnavailable) as err:
            resolve(data, server.client())
    assert len(server.requests) == 2 and caplog.records
    assert TOKEN not in str(err.value)
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("key, bad", [
    ("patient", patient("other")),
    ("conditions", bundle(resource("Condition", "c1"), resource("Condition", "abc", "other"))),
    ("medicationStatements", bundle(resource("MedicationStatement", "m", "other", "patient"))),
])
def test_wrong_patient_is_rejected(key, bad):
    """A resource naming another patient raises WrongPatient."""
    with pytest.raises(WrongPatient, match="Patient/other, not Patient/p1"):
        resolve(full_prefetch() | {key: bad}, no_network())


def test_wrong_patient_message_names_key_and_resource():
    """The WrongPatient message names the key, the resource and both patients."""
    data = full_prefetch() | {"conditions": bundle(resource("Condition", "abc", "other"))}
    with pytest.raises(WrongPatient) as err:
        resolve(data, no_network())
    assert str(err.value) == "prefetch 'conditions' holds Condition/abc for Patient/other, not Patient/p1"


def test_absolute_patient_reference_and_unlinked_resources_are_kept():
    """Absolute Patient URLs for the right patient and resources without subject are accepted."""
    absolute = {"resourceType": "Condition", "id": "c2",
                "subject": {"reference": f"{FHIR}Patient/{PID}"}}
    unlinked = {"resourceType": "Observation", "id": "o2"}
    data = full_prefetch() | {"conditions": bundle(absolute), "observations": bundle(unlinked)}
    result = resolve(data, no_network())
    assert result["conditions"] == [absolute] and result["observations"] == [unlinked]


def test_wrong_patient_in_fetched_data_is_rejected():
    """Fetched resources are checked for the patient just like prefetched ones."""
    data = full_prefetch()
    del data["conditions"]
    server = Recorder({f"{FHIR}Condition?patient={PID}":
                       bundle(resource("Condition", "abc", "other"))})
    with pytest.raises(WrongPatient):
        resolve(data, server.client())


def test_render_query_substitutes_context():
    """render_query replaces context tokens and URL-encodes the values."""
    assert render_query("Condition?patient={{context.patientId}}", CONTEXT) == "Condition?patient=p1"
    assert render_query("Patient/{{context.patientId}}", {"patientId": "a&b"}) == "Patient/a%26b"


def test_render_query_missing_context_field_is_data_unavailable():
    """A template token naming a missing context field raises DataUnavailable naming it."""
    with pytest.raises(DataUnavailable, match="encounterId"):
        render_query("Encounter/{{context.encounterId}}", CONTEXT)


# --- against a real HTTP server -------------------------------------------------------------

class FhirHandler(BaseHTTPRequestHandler):
    """Serves a two-page Condition search and a Patient read; records Authorization headers."""

    auth_seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        type(self).auth_seen.append(self.headers.get("Authorization"))
        base = f"http://127.0.0.1:{self.server.server_port}/fhir"
        pages = {
            f"/fhir/Condition?patient={PID}":
                bundle(resource("Condition", "c1"), next_url=f"{base}/Condition?patient={PID}&page=2"),
            f"/fhir/Condition?patient={PID}&page=2": bundle(resource("Condition", "c2")),
            f"/fhir/Patient/{PID}": patient(),
        }
        body = pages.get(self.path)
        payload = json.dumps(body or {"resourceType": "OperationOutcome"}).encode()
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fhir_server(request):
    FhirHandler.auth_seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FhirHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    request.addfinalizer(stop)
    return f"http://127.0.0.1:{server.server_port}/fhir"


def test_real_http_server_fetch_with_paging_and_bearer(fhir_server):
    """Against a real HTTP server: Patient read and paged Condition search, with the bearer header."""
    data = full_prefetch()
    del data["patient"], data["conditions"]
    with httpx.Client(timeout=2) as client:
        result = resolve_prefetch(context=CONTEXT, prefetch=data, fhir_server=fhir_server,
                                  access_token=TOKEN, client=client)
    assert result["patient"] == [patient()]
    assert [r["id"] for r in result["conditions"]] == ["c1", "c2"]
    assert FhirHandler.auth_seen == [f"Bearer {TOKEN}"] * 3
