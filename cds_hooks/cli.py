"""``cds-rules``: serve, validate the rule packs, run a fixture, benchmark."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer
import uvicorn

from cds_hooks import pipeline
from cds_hooks.cards import CARD_EXTENSION
from cds_hooks.fixtures import load_fixture
from cds_hooks.engine import RulesEngine
from cds_hooks.rulebook import RulePackError, load_rules
from cds_hooks.runtime import load_runtime
from cds_hooks.services import SERVICES
from cds_hooks.settings import Settings
from cds_hooks.terminology import TerminologyError, load_terminology

app = typer.Typer(help="Neuropathic pain CDS Hooks service: serve it, check its rules, try them on fixtures.",
                  no_args_is_help=True)

RulesDir = Annotated[Optional[Path], typer.Option(help="Rules folder (default: the shipped rules/).")]
SiteFile = Annotated[Optional[Path], typer.Option(help="Site settings file (default: <rules-dir>/site.yaml).")]


def _settings(rules_dir: Path | None, site_settings: Path | None, **extra) -> Settings:
    overrides = {k: v for k, v in {"rules_dir": rules_dir, "site_settings": site_settings, **extra}.items() if v}
    return Settings(**overrides)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Start the service (uvicorn). Scale with --workers: one rules engine per process."""
    uvicorn.run("cds_hooks.app:app", host=host, port=port, workers=workers)


@app.command()
def validate(rules_dir: RulesDir = None, site_settings: SiteFile = None) -> None:
    """Load and compile every rule pack as the server would; exit 1 with the reason if one is malformed."""
    settings = _settings(rules_dir, site_settings)
    try:
        terminology = load_terminology(settings.rules_dir)
        rules = load_rules(settings.rules_dir / "packs", settings.site_settings_path, terminology)
        RulesEngine(rules)  # durable_rules itself accepts every condition
    except (RulePackError, TerminologyError) as exc:
        typer.secho(f"invalid: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    for rule in rules:
        typer.echo(f"{rule.id:45} v{rule.version:7} {', '.join(rule.hooks)}")
    typer.secho(f"ok: {len(rules)} rules, {len(terminology.value_sets)} value sets, "
                f"{len(terminology.products)} drug products", fg="green")


@app.command()
def run(fixture: Annotated[Path, typer.Argument(help="A fixture folder or its request.json.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the raw CDS Hooks response.")] = False,
        as_of: Annotated[Optional[str], typer.Option(help="Evaluate as of YYYY-MM-DD (default: the fixture's asOf).")] = None,
        rules_dir: RulesDir = None, site_settings: SiteFile = None) -> None:
    """Run one fixture through the rules and print the cards."""
    case = load_fixture(fixture)
    runtime = load_runtime(_settings(rules_dir, site_settings), with_store=False)
    try:
        request = pipeline.parse_request(case.request, SERVICES[case.service_id])
        response = pipeline.answer(runtime, request, date.fromisoformat(as_of) if as_of else case.as_of)
    finally:
        runtime.close()
    if as_json:
        typer.echo(json.dumps(response.model_dump(mode="json", exclude_none=True), indent=2, ensure_ascii=False))
        return
    typer.echo(f"{case.name}: {case.description}\n")
    for card in response.cards:
        typer.secho(f"[{card.indicator.value}] {card.summary}", bold=True)
        typer.echo(f"  rule {card.extension[CARD_EXTENSION]['ruleId']}; source: {card.source.label}")
        typer.echo("  " + (card.detail or "").replace("\n", "\n  "))
        for suggestion in card.suggestions or []:
            typer.echo(f"  -> {suggestion.label}")
        typer.echo("")
    typer.echo(f"{len(response.cards)} card(s)")


@app.command()
def bench(repeats: int = 300) -> None:
    """Start the service and report server-side p50/p99 for order-select with 10, 100 and 1,000 resources."""
    from cds_hooks import benchmark

    typer.echo(benchmark.report(benchmark.run(repeats=repeats)))


@app.command()
def catalogue(rules_dir: RulesDir = None,
              check: Annotated[bool, typer.Option(help="Exit 1 if the file is not current; write nothing.")] = False) -> None:
    """Write <rules-dir>/CATALOGUE.md (rules, triggers, parameters, citations, fixture cases) for clinical review."""
    from cds_hooks.catalogue import render_catalogue

    folder = _settings(rules_dir, None).rules_dir
    output = folder / "CATALOGUE.md"
    text = render_catalogue(folder / "packs")
    if check:
        if not output.exists() or output.read_text() != text:
            typer.secho(f"{output} is not current: run `cds-rules catalogue`", fg="red", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output} is current")
        return
    output.write_text(text)
    typer.echo(f"wrote {output}")
