"""Alembic environment of the XORB platform (docs/design/platform.md, "Schema").

The database is taken from ``DATABASE_URL`` (``postgres://user:pw@host:port/db``; the scheme is
rewritten to ``postgresql+psycopg2://`` for SQLAlchemy). ``XORB_STATEMENT_TIMEOUT_MS``, when set,
becomes the session's ``statement_timeout``. The URL, and so the password, is never logged or
printed: errors name the variable, not its value.

All revisions of one ``alembic upgrade``/``downgrade`` run in a single transaction (PostgreSQL has
transactional DDL), so a failed or timed-out run leaves the schema where it was.
"""

from __future__ import annotations

import os
import re
from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import URL, make_url

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# The revisions are hand-written SQL; there is no model metadata to autogenerate from.
target_metadata = None

DRIVER_SCHEME = "postgresql+psycopg2"
ACCEPTED_SCHEMES = ("postgres", "postgresql", DRIVER_SCHEME)
APPLICATION_NAME = "xorb-migrations"


def database_url() -> URL:
    """``DATABASE_URL`` as a SQLAlchemy URL for psycopg2. Never echoes the value."""
    raw = os.environ.get("DATABASE_URL", "").strip()
    if not raw:
        raise CommandError(
            "DATABASE_URL is not set (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ACCEPTED_SCHEMES:
        # Only name the scheme when it looks like one: a malformed value may be all password.
        shown = f" {scheme!r}" if sep and re.fullmatch(r"[A-Za-z0-9+.-]{1,32}", scheme) else ""
        raise CommandError(
            f"DATABASE_URL: unsupported scheme{shown} (expected postgres:// or postgresql://)"
        )
    url = None
    try:
        url = make_url(f"{DRIVER_SCHEME}://{rest}")
    except Exception:  # noqa: BLE001 - the message would contain the URL
        pass
    if url is None:
        raise CommandError("DATABASE_URL is not a valid URL")
    if not url.database:
        raise CommandError("DATABASE_URL names no database (expected .../DATABASE)")
    return url


def statement_timeout_ms() -> int | None:
    raw = os.environ.get("XORB_STATEMENT_TIMEOUT_MS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise CommandError(
            f"XORB_STATEMENT_TIMEOUT_MS must be a positive number of milliseconds, not {raw!r}"
        )
    return int(raw)


def connect_args() -> dict[str, str]:
    # libpq's "options" sets the parameters when the session starts, before any migration runs.
    args = {"application_name": APPLICATION_NAME}
    timeout = statement_timeout_ms()
    if timeout is not None:
        args["options"] = f"-c statement_timeout={timeout}"
    return args


def run_migrations_offline() -> None:
    """``alembic ... --sql``: print the SQL; needs no database and no DATABASE_URL."""
    context.configure(
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(
        database_url(),
        poolclass=pool.NullPool,
        connect_args=connect_args(),
    )
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
