"""The durable_rules adapter: compiled rules in, findings out. Nothing else touches durable_rules.

It guards the library's known hazards (design.md, "durable_rules: known hazards"):
1. the C core is not thread-safe: every call goes through one process-wide lock;
2. facts are partitioned by session id and at most 1024 sessions may live: every
   evaluation gets a fresh sid, deleted in ``finally``;
3. ``none(...)`` only sees facts asserted before the fact that completes the match: context
   facts are asserted first and triggers last, whatever order the caller gives, and the
   compiler puts trigger patterns last among the positive ones (rulebook.py);
4. a fact that matches no rule raises MessageNotHandledException: ignored per fact; every
   fact carries a unique id, so MessageObservedException cannot happen;
5. a ruleset name registers once per host: each engine gets its own host and unique names;
6. the host's background dispatch threads would call the core outside the lock; this host
   does not start them (rules here have no timers or async actions);
7. deleting a session in which no action ever ran crashes the C core (uninitialised state
   freed) and deleting one never created raises: every ruleset has an end-of-facts rule and
   every evaluation asserts that fact last, so each session exists and runs an action.

An evaluation runs in two passes, each in its own session: assessment rules first judge the
record alone (e.g. "adequate trial of gabapentin") and their conclusions become
``assessment`` facts; card rules then see the record, those assessments and the triggers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
from dataclasses import dataclass, field

from durable.engine import Host, MessageNotHandledException

from cds_hooks.facts import END_OF_FACTS, FactSet
from cds_hooks.rulebook import CompiledRule, RulePackError

log = logging.getLogger(__name__)

_CORE_LOCK = threading.Lock()
_ruleset_names = itertools.count()
_END_OF_FACTS = {"kind": END_OF_FACTS, "id": END_OF_FACTS}


@dataclass
class Finding:
    """One rule that fired for one concern, with every fact bound to each of its aliases."""

    rule: CompiledRule
    bindings: dict[str, list[dict]] = field(default_factory=dict)

    def first(self, alias: str) -> dict:
        return self.bindings[alias][0]


class _SynchronousHost(Host):
    def _run(self) -> None:
        """Start no dispatch threads: actions run inside assert_fact, under the lock."""


class RulesEngine:
    def __init__(self, rules: list[CompiledRule]) -> None:
        self.rules = rules
        self._matches: dict[str, list[tuple[CompiledRule, dict[str, dict]]]] = {}
        self._rulesets: dict[tuple[str, str], str] = {}  # (pass, hook) -> ruleset name
        definitions = {}
        for step, members in (("assess", [r for r in rules if r.assess]), ("cards", [r for r in rules if r.card])):
            for hook in sorted({h for rule in members for h in rule.hooks}):
                name = f"{step}-{hook}-{next(_ruleset_names)}"
                definitions[name] = {f"r{i}": {"all": rule.condition, "run": self._collector(rule)}
                                     for i, rule in enumerate(r for r in members if hook in r.hooks)}
                definitions[name]["end-of-facts"] = {"all": [{"m": {"kind": END_OF_FACTS}}], "run": _ignore}
                self._rulesets[step, hook] = name
        with _CORE_LOCK:
            try:
                self._host = _SynchronousHost(definitions)
            except Exception as exc:
                raise _rejected_rule(rules, exc) from exc

    def evaluate(self, hook: str, facts: FactSet) -> list[Finding]:
        """Run one hook's rules over one patient's facts: assessments, then cards."""
        assessments = [assessment_fact(f) for f in self._run(("assess", hook), facts.context)]
        return self._run(("cards", hook), facts.context + _unique(assessments) + facts.triggers)

    def live_sessions(self) -> int:
        """Sessions currently held (0 between evaluations); for leak tests and health checks."""
        return len(self._matches)

    def _run(self, ruleset_key: tuple[str, str], facts: list[dict]) -> list[Finding]:
        """Assert the facts in order, then end-of-facts, in a fresh session that is always deleted."""
        ruleset = self._rulesets.get(ruleset_key)
        if ruleset is None:
            return []
        sid = uuid.uuid4().hex
        with _CORE_LOCK:
            self._matches[sid] = []
            try:
                for fact in facts + [_END_OF_FACTS]:  # hazards 3 and 7
                    self._assert(ruleset, {**fact, "sid": sid})
                matches = self._matches[sid]
            finally:
                del self._matches[sid]
                self._host.delete_state(ruleset, sid)
        return _merge(matches)

    def _assert(self, ruleset: str, fact: dict) -> None:
        try:
            self._host.assert_fact(ruleset, fact)
        except MessageNotHandledException:
            pass  # no rule looks at this fact

    def _collector(self, rule: CompiledRule):
        def collect(c) -> None:
            try:
                # c._m holds the matched facts by alias; the public accessors wrap them one by one
                bound = {alias: dict(c._m[alias]) for alias in rule.aliases}
                self._matches[c.s.sid].append((rule, bound))
            except Exception:
                log.exception("rule %s failed while collecting its match", rule.id)
        return collect


def _rejected_rule(rules: list[CompiledRule], error: Exception) -> RulePackError:
    """Name the rule durable_rules refused (it only says "Could not create ruleset"), by trying each alone."""
    for rule in rules:
        try:
            _SynchronousHost({f"check-{next(_ruleset_names)}": {"r": {"all": rule.condition, "run": _ignore}}})
        except Exception as exc:
            return RulePackError(f"{rule.source_file}: rule {rule.id}: durable_rules rejects its condition: {exc}")
    return RulePackError(f"durable_rules rejects the rule set: {error}")


def assessment_fact(finding: Finding) -> dict:
    """The conclusion of an assessment rule as a fact other rules can match."""
    rule = finding.rule
    subject = finding.first(rule.assess.subject)
    fact = {"kind": "assessment", "id": f"assessment:{rule.assess.label}:{subject['id']}",
            "label": rule.assess.label, "subject": subject["id"], "rule": rule.id}
    fact.update({key: subject[key] for key in ("ingredient", "drug_class", "status") if key in subject})
    return fact


def _unique(facts: list[dict]) -> list[dict]:
    return list({fact["id"]: fact for fact in facts}.values())


def _ignore(c) -> None:
    """The end-of-facts action: its only job is to have run (hazard 7)."""


def _merge(matches: list[tuple[CompiledRule, dict[str, dict]]]) -> list[Finding]:
    """One finding per rule and concern (card.one_per or assess.subject), whatever the number of matches."""
    findings: dict[tuple[str, str], Finding] = {}
    for rule, bound in matches:
        concern_alias = rule.assess.subject if rule.assess else rule.card.one_per
        concern = bound[concern_alias]["id"] if concern_alias else ""
        finding = findings.setdefault((rule.id, concern), Finding(rule))
        for alias, fact in bound.items():
            fact.pop("sid", None)
            facts = finding.bindings.setdefault(alias, [])
            if all(f["id"] != fact["id"] for f in facts):
                facts.append(fact)
    return list(findings.values())
