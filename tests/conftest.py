"""Shared fixtures: a service under TestClient, the fixture corpus, and a fresh-process runner."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cds_hooks.app import create_app
from cds_hooks.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "fhir_fixtures"
AS_OF = date(2026, 11, 1)
HEADLINE = "order-select-gabapentin-900-duloxetine-30-oxycodone"
ORDER_SELECT = "neuropathic-pain-order-select"


def load_fixture_request(name: str) -> dict:
    """A fresh copy of ``fhir_fixtures/<name>/request.json``."""
    return json.loads((FIXTURES_DIR / name / "request.json").read_text())


@pytest.fixture
def fixture_request():
    """``fixture_request(name)`` -> the hook request body of a fixture case (a new dict each call)."""
    return load_fixture_request


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path}/fb.db", as_of=AS_OF)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def warm_client(client):
    """A client whose rules engine has already fired once.

    durable_rules used to kill the process when a fresh engine's first evaluation fired no
    rule (design.md hazard 7; test_api.test_first_call_without_cards_does_not_crash_the_service
    checks it in a child process). Tests about other behaviour that may end with no card use
    this client, so that a regression fails that one test instead of taking the run down.
    """
    response = client.post(f"/cds-services/{ORDER_SELECT}", json=load_fixture_request(HEADLINE))
    assert response.status_code == 200 and response.json()["cards"]
    return client


_RUNNER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from datetime import date
from fastapi.testclient import TestClient
from cds_hooks.app import create_app
from cds_hooks.settings import Settings

calls = json.loads(open(sys.argv[1]).read())
app = create_app(Settings(database_url=sys.argv[2], as_of=date.fromisoformat(sys.argv[3])))
with TestClient(app, raise_server_exceptions=False) as client:
    for service_id, body in calls:
        response = client.post(f"/cds-services/{service_id}", json=body)
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        print(json.dumps({"status": response.status_code, "body": payload}), flush=True)
"""


@dataclass
class FreshRun:
    returncode: int
    responses: list[dict]  # {"status": int, "body": ...}, one per call answered
    stderr: str


@pytest.fixture
def fresh_service(tmp_path):
    """``fresh_service([(service_id, body), ...])``: the calls, in order, against a newly started
    service in a child process, so that a crash in native code fails one test, not the run."""
    def run(calls: list[tuple[str, dict]]) -> FreshRun:
        calls_file = tmp_path / "calls.json"
        calls_file.write_text(json.dumps(calls))
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(calls_file), f"sqlite:///{tmp_path}/fresh.db", AS_OF.isoformat()],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        responses = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        return FreshRun(done.returncode, responses, done.stderr[-2000:])
    return run
