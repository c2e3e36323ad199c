"""What the service loads once at start-up: terminology, compiled rules, the engine, storage."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from cds_hooks.engine import RulesEngine
from cds_hooks.feedback_store import FeedbackStore
from cds_hooks.rulebook import load_rules
from cds_hooks.settings import Settings
from cds_hooks.terminology import Terminology, load_terminology


@dataclass
class Runtime:
    settings: Settings
    terminology: Terminology
    engine: RulesEngine
    fhir_client: httpx.Client
    store: FeedbackStore | None = None

    def close(self) -> None:
        self.fhir_client.close()
        if self.store:
            self.store.close()


def load_runtime(settings: Settings, with_store: bool = True) -> Runtime:
    """Load and compile everything; a malformed rule pack raises here, before serving."""
    terminology = load_terminology(settings.rules_dir)
    rules = load_rules(settings.rules_dir / "packs", settings.site_settings_path, terminology)
    return Runtime(
        settings=settings,
        terminology=terminology,
        engine=RulesEngine(rules),
        fhir_client=httpx.Client(timeout=settings.fhir_timeout_seconds, follow_redirects=False),
        store=FeedbackStore(settings.database_url) if with_store else None,
    )
