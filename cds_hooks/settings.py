"""Service settings, read from ``CDS_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", env_file=".env", extra="ignore")

    rules_dir: Path = REPO_ROOT / "rules"
    """Rule packs (packs/), value sets (valuesets/), drugs.yaml and stop_reasons.yaml."""
    site_settings: Path | None = None
    """Per-site rule overrides; defaults to <rules_dir>/site.yaml."""
    database_url: str = "sqlite:///var/feedback.db"
    """Where card feedback is stored: any SQLAlchemy URL; the SQLite file is created on first use."""
    fhir_timeout_seconds: float = 5.0
    """Timeout of each request to the EHR's FHIR server when prefetch is incomplete."""
    as_of: date | None = None
    """Evaluate as of this date instead of today (sandbox and fixtures only)."""

    @property
    def site_settings_path(self) -> Path:
        return self.site_settings or self.rules_dir / "site.yaml"
