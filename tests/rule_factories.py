"""Small builders shared by the engine and rulebook tests: facts, rule packs, a rules/ copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from cds_hooks.rulebook import CompiledRule, load_rules
from cds_hooks.terminology import load_terminology

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
GABAPENTIN = "first-line-inadequate-trial.gabapentin"
NOT_TOLERATED = "first-line-not-tolerated"


def shipped_rules() -> list[CompiledRule]:
    return load_rules(RULES / "packs", RULES / "site.yaml", load_terminology(RULES))


def first_line_rules() -> list[CompiledRule]:
    """The shipped first-line-trials pack only: the engine tests reason about its findings."""
    return [rule for rule in shipped_rules() if rule.source_file.endswith("first-line-trials.yaml")]


def load_dir(rules_dir: Path) -> list[CompiledRule]:
    """Load a rules/ folder the way the server does."""
    return load_rules(rules_dir / "packs", rules_dir / "site.yaml", load_terminology(rules_dir))


def copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- facts -------------------------------------------------------------------------------------

def condition(cid: str = "Condition/pnp") -> dict:
    return {"kind": "condition", "id": cid, "reference": cid, "value_sets": ["peripheral-neuropathic-pain"]}


def medication(mid: str, ingredient: str, drug_class: str, **fields) -> dict:
    """A stopped, dosed first-line trial; override any field."""
    return {"kind": "medication", "id": mid, "ingredient": ingredient, "drug_class": drug_class,
            "status": "stopped", "stop_reason": "ineffective", "dose_known": True,
            "max_daily_mg": 900, "days_at_max": 30, "days_on_therapy": 60, **fields}


def gabapentin(mid: str = "MedicationStatement/gaba", **fields) -> dict:
    return medication(mid, "gabapentin", "gabapentinoid", **fields)


def trigger(tid: str = "trigger:MedicationRequest/oxy", ingredient: str = "oxycodone",
            drug_class: str = "strong-opioid") -> dict:
    return {"kind": "trigger", "id": tid, "origin": "draft", "reference": tid.removeprefix("trigger:"),
            "resource_type": "MedicationRequest", "ingredient": ingredient, "drug_class": drug_class,
            "display": ingredient}


# --- a small pack with a `none` rule -------------------------------------------------------------

def snri_pack(**rule_changes) -> dict:
    """Pack with rule `opioid-without-snri` (fires on an opioid order when no SNRI is on record)
    and rule `order-seen` (fires on every order, so every evaluation has at least one finding)."""
    rule = {
        "id": "opioid-without-snri", "version": "1.0.0", "status": "active", "hooks": ["order-select"],
        "description": "An opioid is ordered and no SNRI is on record.",
        "parameters": {"escalation_classes": {"default": ["strong-opioid"], "description": "opioid classes"}},
        "when": [
            {"fact": "trigger", "as": "order", "where": {"drug_class": {"in": "$escalation_classes"}}},
            {"none": {"fact": "medication", "where": {"drug_class": "snri"}}},
        ],
        "card": {"one_per": "order", "indicator": "info", "summary": "No SNRI tried before {order.ingredient}",
                 "detail": "Consider an SNRI.", "source": {"label": "test", "url": "https://example.org"}},
    }
    seen = {**rule, "id": "order-seen", "description": "Any order.", "parameters": {},
            "when": [{"fact": "trigger", "as": "order"}],
            "card": {**rule["card"], "summary": "Order {order.ingredient}"}}
    return {"pack": "test", "title": "Test pack", "rules": [{**rule, **rule_changes}, seen]}


# --- durable_rules 2.0.28 crash probe ------------------------------------------------------------

_NO_MATCH_PROBE = textwrap.dedent("""
    from cds_hooks.engine import RulesEngine
    from cds_hooks.facts import FactSet
    from tests.rule_factories import shipped_rules
    lab = {"kind": "lab", "id": "lab:egfr", "concept": "egfr", "value": 50}
    RulesEngine(shipped_rules()).evaluate("order-select", FactSet([lab], []))
""")


def engine_survives_no_match() -> bool:
    """Whether a fresh engine's first evaluation, firing no rule, returns at all (in a child process:
    durable_rules 2.0.28 then deletes a session whose never-initialised context pointers it frees)."""
    child = subprocess.run([sys.executable, "-c", _NO_MATCH_PROBE], cwd=REPO, capture_output=True, timeout=120)
    return child.returncode == 0
