"""Structured logs: one JSON object a line, for uvicorn's loggers and ours."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

#: A query parameter named like a secret (``?token=``, ``&api_key=``, ``password=``): a log line
#: keeps its name, never its value. The access log writes every request's path with its query, so a
#: client that puts its token in the URL (the API reads it only from ``Authorization``) would leave
#: it in the log.
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&][\w.-]*(?:token|password|passwd|secret|api[_-]?key)[\w.-]*=)[^&#\s\"']+"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the value of every secret-named query parameter replaced by ``[redacted]``."""
    return _SECRET_PARAMETER.sub(lambda match: match.group(1) + REDACTED, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict that uvicorn accepts as ``log_config``."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
