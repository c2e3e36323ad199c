"""Issued cards and CDS Hooks 2.0 feedback (https://cds-hooks.hl7.org/2.0/#feedback), by rule id/version.

No patient data is stored. Default backend: a SQLite file; any SQLAlchemy URL works. The schema
belongs to the Alembic migrations in ``cds_hooks/migrations``, upgraded to head on every open.
"""

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import (JSON, CheckConstraint, DateTime, Engine, String, TypeDecorator, create_engine,
                        event, insert, make_url, select)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class IssuedCard:
    card_uuid: str
    rule_id: str
    rule_version: str


@dataclass(frozen=True)
class FeedbackItem:
    card_uuid: str
    outcome: str  # "accepted" | "overridden"
    outcome_timestamp: datetime
    accepted_suggestions: list[str] = field(default_factory=list)
    override_reason: dict | None = None  # {"reason": Coding, "userComment": str?}


@dataclass(frozen=True)
class StoredFeedback:
    card_uuid: str
    service_id: str
    outcome: str
    outcome_timestamp: datetime
    accepted_suggestions: list[str]
    override_reason: dict | None
    rule_id: str | None
    rule_version: str | None
    received_at: datetime


class UTCDateTime(TypeDecorator):
    """Aware datetimes stored as UTC; read back aware even where the backend (SQLite) drops the zone."""
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: a time zone is required")
        return value.astimezone(UTC) if value else None

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=value.tzinfo or UTC).astimezone(UTC) if value else None


class Base(DeclarativeBase):
    pass


class IssuedCardRow(Base):
    __tablename__ = "issued_card"
    card_uuid: Mapped[str] = mapped_column(String(255), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(255))
    hook_instance: Mapped[str] = mapped_column(String(255))
    rule_id: Mapped[str] = mapped_column(String(255))
    rule_version: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CardFeedbackRow(Base):
    __tablename__ = "card_feedback"
    __table_args__ = (CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome_valid"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(255), index=True)
    service_id: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    accepted_suggestions: Mapped[list] = mapped_column(JSON)
    override_reason: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rule_id: Mapped[str | None] = mapped_column(String(255))
    rule_version: Mapped[str | None] = mapped_column(String(64))


def _make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if url.database in (None, "", ":memory:"):  # one shared connection, or each session sees an empty db
        return create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    # Real transactions, write-locked at BEGIN: stores opened at once on a fresh file migrate in turn.
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _configure_sqlite_connection(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # let the "begin" listener issue BEGIN IMMEDIATE
    # WAL with synchronous=NORMAL: a commit no longer waits for an fsync, which would otherwise
    # add milliseconds to the hook call that follows it; a power loss may drop the last commits.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def upgrade_schema(engine: Engine) -> None:
    """Run ``alembic upgrade head`` on ``engine``, configured in code (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class FeedbackStore:
    """Issued cards and their feedback, in one database. Safe to share between threads."""

    def __init__(self, database_url: str) -> None:
        self._engine = _make_engine(database_url)
        upgrade_schema(self._engine)

    def record_issued_cards(self, service_id: str, hook_instance: str, cards: list[IssuedCard]) -> None:
        now = datetime.now(UTC)
        rows = [{**asdict(card), "service_id": service_id, "hook_instance": hook_instance, "issued_at": now}
                for card in cards]
        with self._engine.begin() as connection:  # one executemany: this runs after every answered call
            connection.execute(insert(IssuedCardRow), rows)

    def record_feedback(self, service_id: str, items: list[FeedbackItem]) -> None:
        """Store all items in one transaction, or none of them."""
        now = datetime.now(UTC)
        with Session(self._engine) as session, session.begin():
            known = select(IssuedCardRow).where(IssuedCardRow.card_uuid.in_([i.card_uuid for i in items]))
            issued = {card.card_uuid: card for card in session.scalars(known)}
            for item in items:
                card = issued.get(item.card_uuid)  # None: unknown, e.g. issued by another instance
                rule = {"rule_id": card.rule_id, "rule_version": card.rule_version} if card else {}
                session.add(CardFeedbackRow(**asdict(item), **rule, service_id=service_id, received_at=now))

    def feedback_for_card(self, card_uuid: str) -> list[StoredFeedback]:
        query = select(CardFeedbackRow).filter_by(card_uuid=card_uuid).order_by(CardFeedbackRow.id)
        with Session(self._engine) as session:
            return [StoredFeedback(**{f.name: getattr(row, f.name) for f in fields(StoredFeedback)})
                    for row in session.scalars(query)]

    def close(self) -> None:
        self._engine.dispose()
