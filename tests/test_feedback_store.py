"""Tests for the issued-card and feedback store (SQLite, Alembic-managed schema)."""

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from cds_hooks.feedback_store import MIGRATIONS_DIR, FeedbackItem, FeedbackStore, IssuedCard

WHEN = datetime(2024, 11, 21, 9, 30, tzinfo=UTC)
REASON = {"reason": {"system": "http://example.org/override", "code": "pt-declined",
                     "display": "Patient declined"}, "userComment": "Prefers to wait"}


def _head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'nested' / 'feedback.db'}"


@pytest.fixture
def store(db_url):
    store = FeedbackStore(db_url)
    yield store
    store.close()


def test_fresh_sqlite_file_gets_schema_at_head(tmp_path, store, db_url):
    """A fresh SQLite file (and its folder) is created with both tables and alembic_version at head."""
    assert (tmp_path / "nested" / "feedback.db").is_file()
    engine = create_engine(db_url)
    try:
        assert {"issued_card", "card_feedback", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        assert version == _head_revision()
    finally:
        engine.dispose()


def test_second_store_on_same_file_keeps_data(store, db_url):
    """Opening a second store on the same file re-runs the upgrade harmlessly and sees existing data."""
    store.record_issued_cards("order-select", "hook-1", [IssuedCard("card-1", "gabapentin-trial", "1.2.0")])
    store.record_feedback("order-select", [FeedbackItem("card-1", "accepted", WHEN)])
    store.close()
    again = FeedbackStore(db_url)
    try:
        [stored] = again.feedback_for_card("card-1")
        assert (stored.outcome, stored.rule_id) == ("accepted", "gabapentin-trial")
    finally:
        again.close()


def test_stores_opened_at_once_on_fresh_file_all_migrate(db_url):
    """Several stores opening one fresh file at once (e.g. server workers) all migrate without error."""
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            FeedbackStore(db_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_feedback_for_known_card_carries_rule_id_and_version(store):
    """Feedback on an issued card is stored with that card's rule id and version."""
    store.record_issued_cards("pain-order-sign", "hook-2", [IssuedCard("card-2", "capsaicin-patch", "3.0.1")])
    store.record_feedback("pain-order-sign", [FeedbackItem("card-2", "accepted", WHEN)])
    [stored] = store.feedback_for_card("card-2")
    assert (stored.card_uuid, stored.service_id) == ("card-2", "pain-order-sign")
    assert (stored.rule_id, stored.rule_version) == ("capsaicin-patch", "3.0.1")
    assert stored.received_at.tzinfo is not None


def test_feedback_for_unknown_card_has_null_rule(store):
    """Feedback on a card this instance never issued is kept with a null rule id and version."""
    store.record_feedback("pain-order-sign", [FeedbackItem("elsewhere", "overridden", WHEN)])
    [stored] = store.feedback_for_card("elsewhere")
    assert stored.rule_id is None and stored.rule_version is None


def test_suggestions_reason_and_timestamp_round_trip(store):
    """Accepted suggestion uuids, the override reason and the aware outcome timestamp come back unchanged."""
    sent_at = datetime(2024, 11, 21, 10, 15, 30, 123000, tzinfo=timezone(timedelta(hours=-5)))
    store.record_feedback("svc", [
        FeedbackItem("card-3", "accepted", sent_at, accepted_suggestions=["s-1", "s-2"]),
        FeedbackItem("card-3", "overridden", sent_at, override_reason=REASON),
    ])
    accepted, overridden = store.feedback_for_card("card-3")
    assert accepted.accepted_suggestions == ["s-1", "s-2"] and accepted.override_reason is None
    assert overridden.override_reason == REASON and overridden.accepted_suggestions == []
    assert accepted.outcome_timestamp == sent_at and accepted.outcome_timestamp.tzinfo == UTC


def test_record_feedback_is_atomic(store):
    """One invalid item (outcome None violates NOT NULL) rolls back the whole batch."""
    with pytest.raises(IntegrityError):
        store.record_feedback("svc", [FeedbackItem("card-4", "accepted", WHEN),
                                      FeedbackItem("card-4", None, WHEN)])
    assert store.feedback_for_card("card-4") == []


def test_concurrent_writers_lose_nothing(store):
    """Eight threads writing cards and feedback to one file-based store at once lose no row."""
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(25):
                uuid = f"card-{worker}-{n}"
                store.record_issued_cards("svc", f"hook-{uuid}", [IssuedCard(uuid, f"rule-{worker}", "1")])
                store.record_feedback("svc", [FeedbackItem(uuid, "accepted", WHEN)])
                store.feedback_for_card(uuid)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for worker in range(8):
        for n in range(25):
            [stored] = store.feedback_for_card(f"card-{worker}-{n}")
            assert stored.rule_id == f"rule-{worker}"
