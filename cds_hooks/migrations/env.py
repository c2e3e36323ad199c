"""Alembic environment for the feedback store, configured in code (no alembic.ini).

``cds_hooks.feedback_store.upgrade_schema`` points ``script_location`` at this folder (found
via ``Path(__file__)``, so it works from a wheel) and passes an open connection in
``config.attributes["connection"]``. Without one, ``sqlalchemy.url`` is used.
"""

from alembic import context
from sqlalchemy import create_engine

from cds_hooks.feedback_store import Base

config = context.config
target_metadata = Base.metadata  # for `alembic revision --autogenerate`


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode recreates the table instead.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_online(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).begin() as connection:
        run_online(connection)
