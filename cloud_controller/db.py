"""Engines and sessions. SQLite by default (WAL), PostgreSQL by URL: the same SQLModel code."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            _wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _wal(cursor: sqlite3.Cursor, attempts: int = 100) -> None:
    """Switch a SQLite file to WAL, once: the mode is persistent, and switching needs the file alone.

    Several processes opening a new file at once (a controller and its workers) race for that
    switch, and SQLite answers "database is locked" without waiting on the busy timeout.
    """
    for attempt in range(attempts):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def sessions(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session
