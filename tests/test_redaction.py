"""Credentials never leave the daemon (prefetchd/redaction.py): known values and credential shapes scrubbed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from prefetchd.config import S3Settings
from prefetchd.redaction import CHATTY_LOGGERS, REDACTED, RedactingFilter, Redactor, configure_logging

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDM+session/token=="
redact = Redactor.for_settings(S3Settings(access_key_id="AKID", secret_access_key=SECRET, session_token=TOKEN))


@pytest.mark.parametrize(
    "text",
    [
        f"secret {SECRET} in a message",
        f"token {TOKEN}",
        "https://h/b/k?X-Amz-Security-Token=" + TOKEN.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D"),
        f"headers={{'X-Amz-Security-Token': b'{TOKEN}'}}",
    ],
)
def test_known_values_are_scrubbed_plain_and_url_encoded(text: str) -> None:
    clean = redact(text)
    assert REDACTED in clean
    for form in (SECRET, TOKEN, "wEaDM"):
        assert form not in clean


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("x-amz-security-token:IQoJb3JpZ2luX2VjEFEXAMPLE\nhost:s3", "host:s3"),  # a canonical request line
        ("GET /b/k?X-Amz-Signature=0123456789abcdef0123456789abcdef&x=1", "&x=1"),
        ("Authorization: AWS4-HMAC-SHA256 Credential=AKID/x, Signature=0123456789abcdef0123", "Credential=AKID"),
        ("aws_secret_access_key = abcdefghSECRET", "aws_secret_access_key = "),
    ],
)
def test_credential_shapes_are_scrubbed_whoever_supplied_them(text: str, kept: str) -> None:
    clean = Redactor()(text)
    assert REDACTED in clean and kept in clean
    assert "IQoJb3JpZ2lu" not in clean and "0123456789abcdef0123" not in clean and "abcdefghSECRET" not in clean


def test_ordinary_messages_pass_unchanged() -> None:
    text = "s3://bucket-name/training-data/train-images-idx3-ubyte (HTTP 404 NoSuchKey) — check the key and region"
    assert redact(text) == text
    assert Redactor(["short"])("short words stay") == "short words stay"  # too short to be a credential


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(redact))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)


def test_the_filter_scrubs_arguments_and_tracebacks(captured: io.StringIO) -> None:
    logger = logging.getLogger("test.redaction")
    logger.debug("signing with %s", TOKEN)
    try:
        raise RuntimeError(f"request failed: X-Amz-Security-Token={TOKEN}")
    except RuntimeError:
        logger.exception("boom")
    output = captured.getvalue()
    assert "signing with <redacted>" in output and "RuntimeError: request failed" in output
    assert "wEaDM" not in output


def test_http_libraries_stay_at_info_when_the_daemon_logs_debug() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    try:
        configure_logging("DEBUG", redact)
        assert root.level == logging.DEBUG
        assert all(logging.getLogger(name).getEffectiveLevel() == logging.INFO for name in CHATTY_LOGGERS)
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
        root.setLevel(level)
        for name, saved_level in saved.items():
            logging.getLogger(name).setLevel(saved_level)


def test_json_lines_are_scrubbed_too_extras_included() -> None:
    import json

    from prefetchd.observe.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(redact))
    logger = logging.getLogger("test.redaction.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("stream %d signing with %s", 12, TOKEN, extra={"header": f"X-Amz-Security-Token: {TOKEN}"})
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "stream 12 signing with <redacted>" and first["stream"] == 12
    assert first["header"] == "X-Amz-Security-Token: <redacted>"
    assert {"time", "level", "logger", "message"} <= set(first) and first["level"] == "INFO"
    assert second["level"] == "ERROR" and "RuntimeError: failed with <redacted>" in second["exception"]
    assert "wEaDM" not in stream.getvalue() and SECRET not in stream.getvalue()
