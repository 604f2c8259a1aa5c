"""Log lines as text for people or as JSON for log pipelines (`--log-format json`): one
object per line with time, level, logger and message, and the object a line is about
(namespace, name, node, migration) as fields of their own, from a call's `extra` or from
kopf's reference to the object it handles."""

from __future__ import annotations

import datetime
import json
import logging

FIELDS = ("namespace", "name", "node", "migration")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, str] | None = None):
        super().__init__()
        self.static = {k: v for k, v in (static or {}).items() if v}

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
                **self.static}
        for attribute in ("k8s_ref", "kopfvirt_ref"):  # kopf's per-object loggers; about() below
            ref = getattr(record, attribute, None)
            if isinstance(ref, dict):
                line.update({k: ref[k] for k in FIELDS if ref.get(k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter(fmt: str, **static: str) -> logging.Formatter:
    """`fmt` "json" or "text"; `static`: fields of every JSON line (an agent's node)."""
    return JsonFormatter(static) if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def about(namespace: str, name: str, **more: str) -> dict:
    """The `extra` of a log call about an object: `log.info(..., extra=about(ns, name))`
    (one attribute: a record's own `name` is its logger's)."""
    return {"kopfvirt_ref": {"namespace": namespace, "name": name, **more}}
