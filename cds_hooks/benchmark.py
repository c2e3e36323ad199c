"""Latency benchmark: start the service, send order-select calls of growing size, report medians.

The request is the headline fixture (gabapentin 900 mg/day, duloxetine 30 mg/day, oxycodone
selected), its record padded with earlier lab results (copies of its own Observations,
dated a week apart) until the prefetch holds 10, 100 or 1,000 resources. The server-side
time comes from the Server-Timing header; the baseline is ``json.loads`` of the same body.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import httpx

from cds_hooks.fixtures import FIXTURES_DIR, load_fixture

HEADLINE = FIXTURES_DIR / "order-select-gabapentin-900-duloxetine-30-oxycodone"


def padded_request(size: int) -> dict:
    """The headline request with exactly `size` prefetched resources."""
    request = copy.deepcopy(load_fixture(HEADLINE).request)
    prefetch = request["prefetch"]
    bundles = [value for value in prefetch.values() if value and value.get("resourceType") == "Bundle"]
    count = sum(len(b.get("entry", [])) for b in bundles) + 1  # + the Patient
    if size < count:
        raise ValueError(f"the headline fixture already holds {count} resources")
    labs = prefetch["observations"]
    templates = [entry["resource"] for entry in labs["entry"]]
    for n in range(size - count):
        resource = copy.deepcopy(templates[n % len(templates)])
        resource["id"] = f"{resource['id']}-earlier-{n}"
        taken = date.fromisoformat(resource["effectiveDateTime"][:10]) - timedelta(weeks=n // len(templates) + 1)
        resource["effectiveDateTime"] = taken.isoformat()
        resource.pop("issued", None)
        labs["entry"].append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource, "search": {"mode": "match"}})
    labs["total"] = len(labs["entry"])
    return request


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure(client: httpx.Client, url: str, body: bytes, repeats: int) -> dict:
    server_ms, parse_ms = [], []
    for _ in range(repeats):
        response = client.post(url, content=body, headers={"Content-Type": "application/json"})
        response.raise_for_status()
        server_ms.append(float(response.headers["server-timing"].split("dur=")[1]))
        started = time.perf_counter()
        json.loads(body)
        parse_ms.append((time.perf_counter() - started) * 1000)
    return {"p50": statistics.median(server_ms), "p99": percentile(server_ms, 0.99),
            "json_p50": statistics.median(parse_ms), "cards": len(response.json()["cards"])}


def run(sizes: tuple[int, ...] = (10, 100, 1000), repeats: int = 300, warmup: int = 30) -> list[dict]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "CDS_DATABASE_URL": f"sqlite:///{scratch}/bench.db",
               "CDS_AS_OF": load_fixture(HEADLINE).as_of.isoformat()}
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "cds_hooks.app:app", "--port", str(port),
                                   "--log-level", "warning"], env=env, cwd=Path(__file__).resolve().parent.parent)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(base)
            url = f"{base}/cds-services/neuropathic-pain-order-select"
            with httpx.Client(timeout=30) as client:
                results = []
                for size in sizes:
                    body = json.dumps(padded_request(size)).encode()
                    measure(client, url, body, warmup)
                    results.append({"resources": size, "bytes": len(body), **measure(client, url, body, repeats)})
                return results
        finally:
            server.terminate()
            server.wait(timeout=10)


def report(results: list[dict]) -> str:
    lines = [f"{'resources':>9} {'body KiB':>9} {'p50 ms':>8} {'p99 ms':>8} {'json.loads p50 ms':>18} {'ratio p50':>10} {'cards':>5}"]
    for r in results:
        lines.append(f"{r['resources']:>9} {r['bytes'] / 1024:>9.1f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                     f"{r['json_p50']:>18.3f} {r['p50'] / r['json_p50']:>9.1f}x {r['cards']:>5}")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(base: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/cds-services").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"the service did not start within {seconds} s")
