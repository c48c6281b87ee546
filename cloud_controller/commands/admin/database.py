"""A session on the database the controller's settings name, for the admin commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlmodel import Session


@contextmanager
def session(config: str | None) -> Iterator[Session]:
    # Imported here: `cloud-controller rollout ...` and `--help` should not load the database stack.
    from sqlmodel import Session

    from cloud_controller.db import make_engine
    from cloud_controller.settings import load_settings

    engine = make_engine(load_settings(config).database_url)
    try:
        with Session(engine) as opened:
            yield opened
    finally:
        engine.dispose()
