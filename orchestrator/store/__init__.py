"""The store: sweeps, trial attempts and per-epoch rows in SQL (SQLite or PostgreSQL).

Typical use::

    factory = open_store()                      # $LADDER_DB_URL or sqlite:///ladder.db
    with factory.begin() as session:            # the caller owns the transaction
        upsert_sweep(session, sweep)
    save_with_retry(factory, lambda s: record_result(s, result))   # must not be lost

docs/architecture.md, "Layers". Only this package touches SQL; the pure core never imports it.
"""

from orchestrator.store.engine import (
    DB_URL_ENV,
    DEFAULT_DB_URL,
    alembic_config,
    create_store_engine,
    current_revision,
    database_url,
    dispose_stores,
    error_text,
    head_revisions,
    install_log_redaction,
    migrate,
    open_store,
    redact_secrets,
    redact_url,
    resolve_db_url,
    session_factory,
)
from orchestrator.store.models import AttemptRow, Base, EpochRow, SweepRow
from orchestrator.store.repository import (
    all_attempts,
    attempts,
    ensure_sweep,
    epochs_of,
    error_excerpt,
    is_transient,
    list_sweeps,
    mark_attempt,
    record_attempt,
    record_epoch,
    record_result,
    save_with_retry,
    to_result,
    upsert_sweep,
)

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_DB_URL",
    "AttemptRow",
    "Base",
    "EpochRow",
    "SweepRow",
    "alembic_config",
    "all_attempts",
    "attempts",
    "create_store_engine",
    "current_revision",
    "database_url",
    "dispose_stores",
    "ensure_sweep",
    "epochs_of",
    "error_excerpt",
    "error_text",
    "head_revisions",
    "install_log_redaction",
    "is_transient",
    "list_sweeps",
    "mark_attempt",
    "migrate",
    "open_store",
    "record_attempt",
    "record_epoch",
    "record_result",
    "redact_secrets",
    "redact_url",
    "resolve_db_url",
    "save_with_retry",
    "session_factory",
    "to_result",
    "upsert_sweep",
]
