"""`where` clauses compile to durable_rules JSON, name the field in their errors, and run in durable_rules."""

from __future__ import annotations

import json
from datetime import date

import pytest
from durable.engine import Host, MessageNotHandledException

from cds_hooks.engine import RulesEngine
from cds_hooks.facts import FACT_FIELDS, FactSet, build_facts
from cds_hooks.patterns import PatternError, Scope, compile_where
from cds_hooks.rulebook import RulePackError
from cds_hooks.terminology import load_terminology
from rule_factories import RULES, condition, copy_rules, load_dir, medication, trigger, write_yaml

VOCABULARY = {
    "drug_class": frozenset({"gabapentinoid", "snri", "tca", "strong-opioid"}),
    "ingredient": frozenset({"gabapentin", "pregabalin", "duloxetine"}),
    "value_sets": frozenset({"peripheral-neuropathic-pain", "cidp", "b12-deficiency"}),
}
PARAMETERS = {"target": 1800, "classes": ["snri", "tca"], "injury": "S[37][0-9].*", "sets": ["cidp"],
              "bad_classes": ["snri", "ssri"]}
ALIASES = {"trial": FACT_FIELDS["medication"], "order": FACT_FIELDS["trigger"]}


def compiled(where: dict, kind: str = "medication") -> dict:
    """The clause compiled for ``kind``, round-tripped through JSON (what durable_rules receives)."""
    return json.loads(json.dumps(compile_where(kind, where, Scope(FACT_FIELDS[kind], PARAMETERS, ALIASES, VOCABULARY))))


def kind(name: str = "medication") -> dict:
    return {"kind": name}


COMPILES = [
    pytest.param({"status": "stopped"}, "medication", [kind(), {"status": "stopped"}], id="equality"),
    pytest.param({"dose_known": True}, "medication", [kind(), {"dose_known": True}], id="equality-bool"),
    pytest.param({"max_daily_mg": {"lt": 900}}, "medication", [kind(), {"$lt": {"max_daily_mg": 900}}], id="lt"),
    pytest.param({"max_daily_mg": {"lte": 900}}, "medication", [kind(), {"$lte": {"max_daily_mg": 900}}], id="lte"),
    pytest.param({"days_at_max": {"gt": 14}}, "medication", [kind(), {"$gt": {"days_at_max": 14}}], id="gt"),
    pytest.param({"days_at_max": {"gte": 14}}, "medication", [kind(), {"$gte": {"days_at_max": 14}}], id="gte"),
    pytest.param({"stop_reason": {"not": "adverse-effect"}}, "medication",
                 [kind(), {"$neq": {"stop_reason": "adverse-effect"}}], id="not"),
    pytest.param({"max_daily_mg": {"gte": 300, "lt": "$target"}}, "medication",
                 [kind(), {"$gte": {"max_daily_mg": 300}}, {"$lt": {"max_daily_mg": 1800}}],
                 id="two-operators-anded-with-param"),
    pytest.param({"drug_class": {"in": ["snri", "tca"]}}, "medication",
                 [kind(), {"$or": [{"drug_class": "snri"}, {"drug_class": "tca"}]}], id="in"),
    pytest.param({"drug_class": {"in": "$classes"}}, "medication",
                 [kind(), {"$or": [{"drug_class": "snri"}, {"drug_class": "tca"}]}], id="in-param"),
    pytest.param({"value_sets": {"contains": "cidp"}}, "condition",
                 [kind("condition"), {"$iany": {"value_sets": {"$i": "cidp"}}}], id="contains"),
    pytest.param({"value_sets": {"contains_any": ["cidp", "b12-deficiency"]}}, "condition",
                 [kind("condition"), {"$or": [{"$iany": {"value_sets": {"$i": "cidp"}}},
                                              {"$iany": {"value_sets": {"$i": "b12-deficiency"}}}]}],
                 id="contains_any"),
    pytest.param({"value_sets": {"contains_any": "$sets"}}, "trigger",
                 [kind("trigger"), {"$or": [{"$iany": {"value_sets": {"$i": "cidp"}}}]}], id="contains_any-param"),
    pytest.param({"code": {"matches": "S[37][0-9].*"}}, "condition",
                 [kind("condition"), {"$mt": {"code": "S[37][0-9].*"}}], id="matches"),
    pytest.param({"code": {"matches": "$injury"}}, "condition",
                 [kind("condition"), {"$mt": {"code": "S[37][0-9].*"}}], id="matches-param"),
    pytest.param({"end": {"exists": True}}, "medication", [kind(), {"$ex": {"end": 1}}], id="exists-true"),
    pytest.param({"end": {"exists": False}}, "medication", [kind(), {"$nex": {"end": 1}}], id="exists-false"),
    pytest.param({"any": [{"status": "active"}, {"all": [{"status": "stopped"}, {"max_daily_mg": {"lt": "$target"}}]}]},
                 "medication",
                 [kind(), {"$or": [{"status": "active"},
                                   {"$and": [{"status": "stopped"}, {"$lt": {"max_daily_mg": 1800}}]}]}],
                 id="any-all-nesting"),
    pytest.param({"all": [{"status": "stopped", "dose_known": True}]}, "medication",
                 [kind(), {"$and": [{"status": "stopped"}, {"dose_known": True}]}], id="all-of-a-mapping"),
    pytest.param({"ingredient": "@order.ingredient"}, "medication",
                 [{"ingredient": {"order": "ingredient"}}, kind()], id="alias-equality-first"),
    pytest.param({"drug_class": {"not": "@trial.drug_class"}}, "medication",
                 [{"$neq": {"drug_class": {"trial": "drug_class"}}}, kind()], id="alias-not-first"),
    pytest.param({"drug_class": {"in": ["snri", "tca"], "not": "@trial.drug_class"}}, "medication",
                 [{"$neq": {"drug_class": {"trial": "drug_class"}}}, kind(),
                  {"$or": [{"drug_class": "snri"}, {"drug_class": "tca"}]}],
                 id="alias-before-in-list"),
    pytest.param({"any": [{"status": "active"}], "drug_class": {"not": "@trial.drug_class"}}, "medication",
                 [{"$neq": {"drug_class": {"trial": "drug_class"}}}, kind(), {"$or": [{"status": "active"}]}],
                 id="alias-before-any"),
]


@pytest.mark.parametrize("where, fact_kind, terms", COMPILES)
def test_operator_compiles_to_durable_rules_json(where, fact_kind, terms):
    """Each operator compiles to its durable_rules term, ANDed with the fact kind, references first."""
    assert compiled(where, fact_kind) == {"$and": terms}


ERRORS = [
    pytest.param({"dose": 5}, ["unknown field 'dose'"], id="unknown-field"),
    pytest.param({"any": [{"dose": 5}]}, ["unknown field 'dose'"], id="unknown-field-inside-any"),
    pytest.param({"max_daily_mg": {"below": 5}}, ["max_daily_mg: unknown operator 'below'"], id="unknown-operator"),
    pytest.param({"drug_class": {"in": []}}, ["drug_class: needs a non-empty list"], id="empty-in"),
    pytest.param({"drug_class": {"in": "snri"}}, ["drug_class: needs a non-empty list"], id="in-not-a-list"),
    pytest.param({"sources": {"contains_any": []}}, ["sources: needs a non-empty list"], id="empty-contains_any"),
    pytest.param({"ingredient": {"matches": "S[3"}}, ["ingredient: ", "regular expression"],
                 id="bad-regex"),
    pytest.param({"ingredient": {"matches": 5}}, ["ingredient: ", "regular expression"],
                 id="regex-not-text"),
    pytest.param({"max_daily_mg": {"lt": "$nope"}}, ["unknown parameter '$nope'"], id="unknown-parameter"),
    pytest.param({"drug_class": {"not": "@nobody.drug_class"}}, ["'@nobody.drug_class' names no earlier fact"],
                 id="unknown-alias"),
    pytest.param({"drug_class": {"not": "@trial.colour"}}, ["'@trial.colour'", "no field 'colour'"],
                 id="unknown-alias-field"),
    pytest.param({"drug_class": {"in": ["snri", "ssri"]}}, ["drug_class: unknown value 'ssri'"],
                 id="unknown-drug-class"),
    pytest.param({"drug_class": "ssri"}, ["drug_class: unknown value 'ssri'"], id="unknown-drug-class-equality"),
    pytest.param({"drug_class": {"in": "$bad_classes"}}, ["drug_class: unknown value 'ssri'"],
                 id="unknown-drug-class-via-parameter"),
    pytest.param({"ingredient": {"not": "gabapentine"}}, ["ingredient: unknown value 'gabapentine'"],
                 id="unknown-ingredient"),
    pytest.param({"any": []}, ["'any' needs a non-empty list"], id="empty-any"),
    pytest.param({"all": ["status"]}, ["expected a mapping"], id="all-of-a-non-mapping"),
]


@pytest.mark.parametrize("where, fragments", ERRORS)
def test_bad_clause_names_what_is_wrong(where, fragments):
    """A clause that cannot compile raises PatternError naming the field (or parameter/alias) and the reason."""
    with pytest.raises(PatternError) as error:
        compiled(where)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("where", [
    {"value_sets": {"contains": "no-such-set"}},
    {"value_sets": {"contains_any": ["cidp", "no-such-set"]}},
], ids=["contains", "contains_any"])
def test_unknown_value_set_id_is_named(where):
    """An unknown value-set id in value_sets is rejected by the vocabulary, naming the field and the id."""
    with pytest.raises(PatternError, match="value_sets: unknown value 'no-such-set'"):
        compiled(where, "condition")


@pytest.mark.parametrize("where", [{"max_daily_mg": {"lt": "$nope"}}, {"status": {"not": "@nobody.drug_class"}}],
                         ids=["parameter", "alias"])
def test_parameter_and_alias_errors_name_the_field(where):
    """An unknown $parameter or @alias error also names the field of the clause."""
    field = next(iter(where))
    with pytest.raises(PatternError, match=field):
        compiled(where)


def _walk(term):
    yield term
    if isinstance(term, dict):
        for value in term.values():
            yield from _walk(value)
    elif isinstance(term, list):
        for item in term:
            yield from _walk(item)


@pytest.mark.parametrize("where", [{"ingredient": {"in": "@order.ingredient"}},
                                   {"sources": {"contains_any": "@order.reference"}}], ids=["in", "contains_any"])
def test_list_operator_with_a_reference_is_not_compiled_to_the_alias_name(where):
    """`in` / `contains_any` with an @alias.field operand is rejected rather than compared with the alias name."""
    field = next(iter(where))
    try:
        result = compiled(where)
    except PatternError as exc:
        assert field in str(exc)
        return
    assert not any(term in ({field: "order"}, {"$i": "order"}) for term in _walk(result))


# --- end to end: a tiny pack in a copied rules dir, through a real RulesEngine -------------------------

SOURCE = {"label": "test", "url": "https://example.org"}


def card_rule(rule_id: str, when: list, one_per: str | None = None, **extra) -> dict:
    card = {"indicator": "info", "summary": rule_id, "detail": rule_id, "source": SOURCE}
    if one_per:
        card["one_per"] = one_per
    return {"id": rule_id, "version": "1.0.0", "status": "active", "hooks": ["order-select"],
            "description": rule_id, "when": when, "card": card, **extra}


DRAFT = {"fact": "trigger", "as": "order", "where": {"origin": "draft"}}
FIRST_LINE = ["gabapentinoid", "snri", "tca"]
PATTERN_RULES = [
    card_rule("injury", [{"fact": "condition", "as": "injury",
                          "where": {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": {"matches": "S[37][0-9].*"}}},
                         DRAFT], one_per="injury"),
    card_rule("imaging-order", [{"fact": "trigger", "as": "order", "where": {
        "value_sets": {"contains_any": ["mri-pelvis", "ct-pelvis-contrast"]}}}], one_per="order"),
    card_rule("other-class-untried", [
        {"fact": "medication", "as": "trial", "where": {"stop_reason": "adverse-effect"}}, DRAFT,
        {"none": {"fact": "medication", "where": {"drug_class": {"in": FIRST_LINE, "not": "@trial.drug_class"}}}},
    ], one_per="trial"),
    card_rule("other-class-untried-except-order", [
        {"fact": "medication", "as": "trial", "where": {"stop_reason": "adverse-effect"}}, DRAFT,
        {"none": {"fact": "medication", "where": {"drug_class": {"in": FIRST_LINE, "not": "@trial.drug_class"},
                                                  "ingredient": {"not": "@order.ingredient"}}}},
    ], one_per="trial"),
    card_rule("dose-unrecorded", [{"fact": "medication", "as": "trial", "where": {"max_daily_mg": {"exists": False}}},
                                  DRAFT], one_per="trial"),
]


@pytest.fixture(scope="module")
def pattern_rules(tmp_path_factory):
    rules_dir = copy_rules(tmp_path_factory.mktemp("patterns"))
    write_yaml(rules_dir / "packs" / "test-patterns.yaml", {"pack": "test-patterns", "title": "t", "rules": PATTERN_RULES})
    ids = {rule["id"] for rule in PATTERN_RULES}
    return {rule.id: rule for rule in load_dir(rules_dir) if rule.id in ids}


@pytest.fixture(scope="module")
def pattern_engine(pattern_rules) -> RulesEngine:
    return RulesEngine(list(pattern_rules.values()))


def fired(engine: RulesEngine, context: list[dict], triggers: list[dict] | None = None) -> dict[str, list[dict]]:
    """Rule id -> the facts bound to each of its findings' `one_per` alias."""
    result: dict[str, list[dict]] = {}
    for finding in engine.evaluate("order-select", FactSet(context, triggers if triggers is not None else [trigger()])):
        result.setdefault(finding.rule.id, []).append(finding.first(finding.rule.card.one_per))
    return result


def icd10(code: str) -> dict:
    return {"kind": "condition", "id": f"Condition/{code}", "system": "http://hl7.org/fhir/sid/icd-10-cm",
            "code": code, "value_sets": ["lumbosacral-plexopathy"]}


def test_matches_on_icd10_codes_end_to_end(pattern_engine):
    """`matches: S[37][0-9].*` fires for S32.1 and S72.001A, not for T32, S40, or S32 inside a longer code."""
    conditions = [icd10(code) for code in ("S32.1", "T32", "S72.001A", "S40", "XS32.1")]
    injuries = fired(pattern_engine, conditions).get("injury", [])
    assert sorted(fact["code"] for fact in injuries) == ["S32.1", "S72.001A"]


def test_matches_needs_the_code_system(pattern_engine):
    """The injury rule's system equality keeps an S32.1 from another code system out."""
    other = {**icd10("S32.1"), "system": "http://snomed.info/sct"}
    assert "injury" not in fired(pattern_engine, [other])


def imaging_trigger(name: str, value_sets: list[str] | None) -> dict:
    fact = {"kind": "trigger", "id": f"trigger:ServiceRequest/{name}", "origin": "draft",
            "reference": f"ServiceRequest/{name}", "resource_type": "ServiceRequest", "display": name}
    return {**fact, "value_sets": value_sets} if value_sets else fact


def test_contains_any_on_value_sets_end_to_end(pattern_engine):
    """`contains_any` matches a trigger holding any listed value set, and no other trigger."""
    triggers = [imaging_trigger("mri", ["mri-pelvis"]),
                imaging_trigger("ct", ["cardiac-pacemaker", "ct-pelvis-contrast"]),
                imaging_trigger("plexus", ["mri-lumbosacral-plexus"]),
                imaging_trigger("uncoded", None)]
    orders = fired(pattern_engine, [condition()], triggers).get("imaging-order", [])
    assert sorted(fact["display"] for fact in orders) == ["ct", "mri"]


PREGABALIN_AE = medication("MedicationStatement/pgb", "pregabalin", "gabapentinoid", stop_reason="adverse-effect")


@pytest.mark.parametrize("on_record, fires", [
    (medication("MedicationStatement/gaba", "gabapentin", "gabapentinoid"), True),  # same class: not a blocker
    (medication("MedicationStatement/dlx", "duloxetine", "snri"), False),
    (medication("MedicationStatement/oxy", "oxycodone", "strong-opioid"), True),  # not in the `in` list
], ids=["same-class", "other-first-line-class", "not-first-line"])
def test_reference_after_in_list_still_filters_a_none_pattern(pattern_engine, on_record, fires):
    """`drug_class: {in: [...], not: @trial.drug_class}` in a none pattern blocks only other first-line classes."""
    assert ("other-class-untried" in fired(pattern_engine, [PREGABALIN_AE, on_record])) is fires


def test_characterization_reference_after_or_is_dropped_by_durable_rules(pattern_rules):
    """LIBRARY CHARACTERIZATION: with the reference after the `$or`, durable_rules lets the same-class drug block."""
    condition_list = pattern_rules["other-class-untried"].condition
    none_name, none_term = next(iter(condition_list[-1].items()))
    assert none_name.endswith("$not")
    terms = none_term["$and"]
    assert "$neq" in terms[0] and any("$or" in term for term in terms[1:])  # what the compiler emits
    reference_last = [{**item} for item in condition_list[:-1]] + [{none_name: {"$and": terms[1:] + terms[:1]}}]

    class Quiet(Host):
        def _run(self):
            """No dispatch threads."""

    results = {}
    for label, conditions in {"compiled": condition_list, "reference-last": reference_last}.items():
        hits = []
        host = Quiet({f"characterize-{label}": {"r": {"all": conditions, "run": lambda c: hits.append(1)}}})
        for fact in [PREGABALIN_AE, medication("MedicationStatement/gaba", "gabapentin", "gabapentinoid"), trigger()]:
            try:
                host.assert_fact(f"characterize-{label}", {**fact, "sid": "s"})
            except MessageNotHandledException:
                pass
        results[label] = bool(hits)
    assert results == {"compiled": True, "reference-last": False}


def test_two_references_control_blocks_on_another_drug(pattern_engine):
    """With venlafaxine (SNRI, not the ordered drug) on record the two-reference none pattern blocks."""
    venlafaxine = medication("MedicationStatement/vlf", "venlafaxine", "snri")
    order = trigger("trigger:MedicationRequest/dlx", "duloxetine", "snri")
    assert "other-class-untried-except-order" not in fired(pattern_engine, [PREGABALIN_AE, venlafaxine], [order])


def test_second_reference_after_in_list_still_filters(pattern_engine):
    """A none pattern with two references, one beside an `in` list, ignores the drug being ordered."""
    duloxetine = medication("MedicationStatement/dlx", "duloxetine", "snri")
    order = trigger("trigger:MedicationRequest/dlx", "duloxetine", "snri")
    assert "other-class-untried-except-order" in fired(pattern_engine, [PREGABALIN_AE, duloxetine], [order])


def test_exists_false_matches_only_absent_fields(pattern_engine):
    """`exists: false` fires for a trial without max_daily_mg and not for one with it."""
    unknown = {key: value for key, value in medication("MedicationStatement/x", "gabapentin", "gabapentinoid").items()
               if key != "max_daily_mg"}
    dosed = medication("MedicationStatement/y", "duloxetine", "snri")
    trials = fired(pattern_engine, [unknown, dosed]).get("dose-unrecorded", [])
    assert [fact["id"] for fact in trials] == ["MedicationStatement/x"]


@pytest.mark.parametrize("regex", [r"S[37]\d.*", r"S32\.1", "^S32.1$"], ids=["digit-escape", "dot-escape", "anchors"])
def test_matches_regex_either_runs_or_is_rejected(tmp_path, regex):
    """A `matches` regex that Python accepts either matches S32.1 in durable_rules or fails at load."""
    rules_dir = copy_rules(tmp_path)
    rule = card_rule("injury-regex", [{"fact": "condition", "as": "injury", "where": {"code": {"matches": regex}}},
                                      DRAFT], one_per="injury")
    write_yaml(rules_dir / "packs" / "test-regex.yaml", {"pack": "test-regex", "title": "t", "rules": [rule]})
    try:
        rules = [r for r in load_dir(rules_dir) if r.id == "injury-regex"]
    except RulePackError:
        return  # rejected at load: fine
    assert "injury-regex" in fired(RulesEngine(rules), [icd10("S32.1")])


def icd10_condition(cid: str, code: str, onset: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
            "onsetDateTime": onset}


def test_matches_rule_fires_from_a_fhir_injury_condition(pattern_engine):
    """An S32.10XA Condition from the record reaches the `matches` injury rule through build_facts."""
    records = {"conditions": [icd10_condition("sacrum", "S32.10XA", "2026-10-12"),
                              icd10_condition("plexus", "G54.1", "2026-10-12")]}
    context = build_facts("order-select", {"draftOrders": {"entry": []}, "selections": []}, records,
                          load_terminology(RULES), date(2026, 11, 1)).context
    assert [fact["code"] for fact in fired(pattern_engine, context).get("injury", [])] == ["S32.10XA"]
