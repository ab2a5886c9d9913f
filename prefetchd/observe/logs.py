"""The daemon's log lines as JSON, one object per line, for log shippers (`--log-format json`).

Each line holds `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus `stream` when the line is about
one (the daemon's messages about a stream begin `stream N`), any fields passed with `extra=`, and `exception`
with its traceback. Scrubbing credentials is not done here: `redaction.RedactingFilter` runs first, whatever
the format.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

_STREAM = re.compile(r"^stream (\d+)\b")
# what every LogRecord carries; anything else on a record came from `extra=`
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if match := _STREAM.match(message):
            entry["stream"] = int(match.group(1))
        entry.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)
