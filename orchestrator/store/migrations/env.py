"""Alembic environment of the store.

Runs from `orchestrator.store.engine.migrate` (which passes an open connection in
`config.attributes["connection"]`, already inside the transaction that holds the migration
lock) and from the alembic CLI for developers (`alembic -c orchestrator/store/alembic.ini
revision --autogenerate -m ...`), which connects to `sqlalchemy.url` or $LADDER_DB_URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from orchestrator.store.engine import create_store_engine, database_url
from orchestrator.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=database_url(config.get_main_option("sqlalchemy.url") or None),
               literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_store_engine(config.get_main_option("sqlalchemy.url") or None)
    try:
        with engine.connect() as fresh:
            _run(fresh)
            fresh.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
