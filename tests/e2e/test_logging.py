"""`--log-format json`: every line the daemon writes is one JSON object, with levels, and no credential in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefetchd.config import ConfigError, load_config
from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import ObjectNotFound
from tests.conftest import BUCKET, Objects
from tests.e2e.test_security import SECRET, TOKEN, one_epoch, put_dataset
from tests.tools.cli import run_prefetchd


def test_json_logs_are_one_object_a_line_with_levels_and_no_secret(s3_server: EmbeddedS3, objects: Objects) -> None:
    image, label = put_dataset(objects)
    env = {**s3_server.environment(), "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}
    with DaemonProcess(env=env, args=("--log-format", "json", "--log-level", "DEBUG")) as daemon:
        assert one_epoch(daemon.socket_path, image, label) == 20
        with pytest.raises(ObjectNotFound):
            one_epoch(daemon.socket_path, f"s3://{BUCKET}/{objects.prefix}/none", label)
        daemon.stop()
        log = daemon.log()
    lines = [json.loads(line) for line in log.splitlines()]  # any line that is not JSON fails here
    assert len(lines) >= 3
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert "INFO" in {line["level"] for line in lines} <= {"DEBUG", "INFO", "WARNING", "ERROR"}
    opened = [line for line in lines if " opened for pid " in line["message"]]
    assert len(opened) == 1 and isinstance(opened[0]["stream"], int), "the stream id as a field"
    for secret in (SECRET, TOKEN, TOKEN.replace("/", "%2F"), "//////////wEaDM"):
        assert secret not in log


def test_the_log_format_comes_from_flags_env_or_file_and_a_bad_one_is_refused(
    s3_server: EmbeddedS3, tmp_path: Path
) -> None:
    config = tmp_path / "prefetchd.toml"
    config.write_text('log_format = "json"\n')
    assert load_config({}, {}).log_format == "text"
    assert load_config({}, {}, config).log_format == "json"
    assert load_config({}, {"PREFETCHD_LOG_FORMAT": "JSON"}).log_format == "json"
    assert load_config({"log_format": "text"}, {"PREFETCHD_LOG_FORMAT": "json"}, config).log_format == "text"
    with pytest.raises(ConfigError, match="log_format is one of text, json"):
        load_config({}, {"PREFETCHD_LOG_FORMAT": "xml"})
    result = run_prefetchd(s3_server, "serve", "--log-format", "xml")
    assert result.returncode == 2 and "--log-format" in result.stderr
