"""The sandbox corpus under ``fhir_fixtures/``: one folder per case, a hook request and its expectations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cds_hooks.cards import CARD_EXTENSION
from cds_hooks.protocol import HookResponse

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fhir_fixtures"


@dataclass(frozen=True)
class Fixture:
    name: str
    service_id: str
    request: dict
    as_of: date
    description: str
    expected: list[str]  # rule ids that must fire, once each
    forbidden: list[str]  # rule ids that must not fire


def load_fixture(path: Path) -> Fixture:
    """A fixture folder, or its request.json."""
    folder = path.parent if path.is_file() else path
    expected = json.loads((folder / "expected.json").read_text())
    return Fixture(
        name=folder.name, service_id=expected["service"], request=json.loads((folder / "request.json").read_text()),
        as_of=date.fromisoformat(expected["asOf"]), description=expected["description"],
        expected=expected["expectedCards"], forbidden=expected["forbiddenCards"],
    )


def all_fixtures(root: Path = FIXTURES_DIR) -> list[Fixture]:
    return [load_fixture(folder) for folder in sorted(root.iterdir()) if (folder / "expected.json").exists()]


def fired_rule_ids(response: HookResponse) -> list[str]:
    return [card.extension[CARD_EXTENSION]["ruleId"] for card in response.cards]
