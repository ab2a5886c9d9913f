"""Credentials never leave the daemon: every log record and every error sent to a client is scrubbed here.

Two nets, because credentials also come from places the config never sees (a profile, an instance role, a
refreshed session): the values the config holds are replaced wherever they appear (plain and URL-encoded),
and so is anything in the shapes AWS puts secrets on the wire (`X-Amz-Security-Token`, `X-Amz-Signature`,
a SigV4 `Signature=`). botocore's DEBUG output prints the canonical request, session token included, so the
daemon also keeps botocore and the HTTP libraries at INFO whatever `log_level` says (`configure_logging`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from urllib.parse import quote

from .config import S3Settings

REDACTED = "<redacted>"
_MIN_SECRET_CHARS = 8  # shorter values would scrub ordinary words out of messages
_SHAPES = (
    # header, query parameter, dict repr or canonical-request line: `name: value`, `name=value`, `'name': b'value'`
    re.compile(r"""(x-amz-security-token['"]?\s*[:=]\s*b?['"]?)[^\s'"&,;}]+""", re.IGNORECASE),
    re.compile(r"""(x-amz-signature['"]?\s*[:=]\s*b?['"]?)[^\s'"&,;}]+""", re.IGNORECASE),
    re.compile(r"""(\bSignature=)[0-9a-f]{16,}""", re.IGNORECASE),
    re.compile(r"""(aws_secret_access_key['"]?\s*[:=]\s*['"]?)[^\s'"&,;}]+""", re.IGNORECASE),
)
# libraries whose DEBUG lines carry request headers; they stay at INFO even when the daemon logs DEBUG
CHATTY_LOGGERS = ("botocore", "aiobotocore", "urllib3", "aiohttp", "s3transfer")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class Redactor:
    """Replaces known secret values and credential-shaped substrings with `<redacted>`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}
        values |= {quote(s, safe="") for s in values} | {quote(s, safe="/") for s in values}
        self._values = sorted(values, key=len, reverse=True)  # a longer form before any part of it

    @classmethod
    def for_settings(cls, s3: S3Settings) -> Redactor:
        return cls((s3.secret_access_key, s3.session_token))

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, REDACTED)
        for shape in _SHAPES:
            text = shape.sub(lambda match: match.group(1) + REDACTED, text)
        return text


class RedactingFilter(logging.Filter):
    """Scrubs a record's message and traceback before any handler formats it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        for key in set(vars(record)) - _RECORD_FIELDS:  # `extra=` fields: the JSON format prints them
            value = getattr(record, key)
            if isinstance(value, str):
                setattr(record, key, self._redact(value))
        return True


def configure_logging(level: str, redact: Redactor, log_format: str = "text") -> None:
    """The daemon's logging: one stderr handler that scrubs credentials, in either format (`text`, or `json`:
    one object per line); HTTP libraries no chattier than INFO."""
    from .observe.logs import JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter(redact))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in CHATTY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(max(library.getEffectiveLevel(), logging.INFO))
