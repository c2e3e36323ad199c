"""Turn a hook request's ``prefetch`` into the patient's FHIR resources.

Keys the EHR prefetched are used as sent; keys it left out are fetched from its
FHIR server with the bearer token it granted. A key sent as ``null`` means "no data".
Spec: https://cds-hooks.hl7.org/2.0/#prefetch-template and
https://cds-hooks.hl7.org/2.0/#fhir-resource-access
"""
from __future__ import annotations

import logging
import re
from urllib.parse import quote, urljoin

import httpx

from cds_hooks.fhir_read import MalformedResource

log = logging.getLogger(__name__)

PREFETCH_TEMPLATES: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&category=laboratory",
    "procedures": "Procedure?patient={{context.patientId}}",
    "serviceRequests": "ServiceRequest?patient={{context.patientId}}",
}
MAX_PAGES = 20  # searchset pages followed per key before giving up
_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")


class DataUnavailable(Exception):
    """Required data was neither prefetched nor fetchable; the service answers 412 with str(exc) as the reason."""


class WrongPatient(ValueError):
    """A resource in the prefetch or fetched data belongs to another patient (answered with 400)."""


def render_query(template: str, context: dict) -> str:
    """Replace each ``{{context.X}}`` token with the URL-encoded context value."""
    def value(match: re.Match) -> str:
        field = match.group(1)
        if context.get(field) in (None, ""):
            raise DataUnavailable(f"prefetch template needs context.{field}, which the request lacks")
        return quote(str(context[field]), safe="")
    return _TOKEN.sub(value, template)


def resolve_prefetch(
    *, context: dict, prefetch: dict | None, fhir_server: str | None,
    access_token: str | None, client: httpx.Client,
    templates: dict[str, str] = PREFETCH_TEMPLATES,
) -> dict[str, list[dict]]:
    """Return every template key's resources: prefetched, or fetched when absent."""
    patient_id = context.get("patientId")
    if not patient_id:
        raise DataUnavailable("context has no patientId")
    prefetch = prefetch or {}
    missing = [key for key in templates if key not in prefetch]
    if missing and not fhir_server:
        raise DataUnavailable(
            "prefetch keys not provided and no fhirServer to fetch them from: " + ", ".join(missing))
    queries = {key: render_query(templates[key], context) for key in missing}
    result: dict[str, list[dict]] = {}
    for key in templates:
        if key in queries:
            result[key] = _fetch(key, queries[key], fhir_server or "", access_token, client)
        else:
            result[key] = _unpack(key, prefetch[key])
        check_patient(f"prefetch {key!r}", result[key], str(patient_id))
    return result


def _unpack(key: str, resource: dict | None) -> list[dict]:
    """One prefetch value (null, a resource or a Bundle) as a list, minus OperationOutcomes."""
    if resource is None:
        return []
    if not isinstance(resource, dict):
        raise MalformedResource(f"prefetch {key!r} is not a FHIR resource (a JSON object) or null")
    if resource.get("resourceType") == "Bundle":
        entries = [e for e in resource.get("entry") or [] if isinstance(e, dict)]
        found = [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]
    else:
        found = [resource]
    for outcome in (r for r in found if r.get("resourceType") == "OperationOutcome"):
        diagnostics = "; ".join(i.get("diagnostics", "?") for i in outcome.get("issue") or [])
        log.warning("prefetch %r: skipped OperationOutcome: %s", key, diagnostics)
    return [r for r in found if r.get("resourceType") != "OperationOutcome"]


def _fetch(key: str, query: str, fhir_server: str, token: str | None,
           client: httpx.Client) -> list[dict]:
    """GET one query and its ``next`` pages; never lets the token reach a message."""
    base = fhir_server.rstrip("/") + "/"
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url: str | None = base + query
    resources: list[dict] = []
    for page in range(MAX_PAGES):
        body = _get_json(key, url, headers, client, token)
        resources += _unpack(key, body)
        url = _next_link(body, base)
        if url is None:
            log.info("fetched prefetch %r: %d resources in %d page(s)", key, len(resources), page + 1)
            return resources
        if not url.startswith(base):  # keep the token on the server the EHR named
            raise DataUnavailable(f"could not fetch {key!r}: next page is outside the fhirServer")
    raise DataUnavailable(f"could not fetch {key!r}: more than {MAX_PAGES} pages")


def _get_json(key: str, url: str, headers: dict, client: httpx.Client, token: str | None) -> dict:
    try:
        response = client.get(url, headers=headers)
        if response.status_code == 404 and "?" not in url:
            cause = "not found (HTTP 404)"
        elif not response.is_success:
            cause = f"HTTP {response.status_code}"
        else:
            body = response.json()
            if isinstance(body, dict) and "resourceType" in body:
                return body
            cause = "response is not a FHIR resource"
    except httpx.TimeoutException:
        cause = "timed out"
    except httpx.HTTPError as exc:
        cause = f"{type(exc).__name__}: {exc}"
    except ValueError:
        cause = "response is not JSON"
    if token:
        cause = cause.replace(token, "***")
    raise DataUnavailable(f"could not fetch {key!r} from the FHIR server: {cause}")


def _next_link(body: dict, base: str) -> str | None:
    if body.get("resourceType") != "Bundle":
        return None
    for link in body.get("link") or []:
        if link.get("relation") == "next" and link.get("url"):
            return urljoin(base, link["url"])
    return None


def check_patient(source: str, resources: list[dict], patient_id: str) -> None:
    """Raise WrongPatient if any resource names a patient other than the context's."""
    expected = f"Patient/{patient_id}"
    for resource in resources:
        kind = resource.get("resourceType")
        if kind == "Patient":
            named = f"Patient/{resource.get('id')}"
        else:
            field = next((f for f in ("subject", "patient") if f in resource), None)
            if field is None:
                continue
            ref = resource[field].get("reference") if isinstance(resource[field], dict) else None
            if not isinstance(ref, str):
                raise WrongPatient(f"{source} holds {kind}/{resource.get('id')} whose {field} "
                                   f"is not a reference to a patient: {resource[field]!r:.60}")
            named = ref.split("/_history/")[0]
        if named != expected and not named.endswith("/" + expected):
            raise WrongPatient(f"{source} holds {kind}/{resource.get('id')} "
                               f"for {named}, not {expected}")
