"""JSON logs, one object per line, with the audit id when there is one."""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any

audit_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        audit_id = getattr(record, "audit_id", None) or audit_id_var.get()
        if audit_id:
            entry["audit_id"] = audit_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JsonFormatter}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {
        "torchdoctor": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}


def configure() -> None:
    import logging.config

    logging.config.dictConfig(LOG_CONFIG)
    logging.Formatter.converter = time.gmtime
