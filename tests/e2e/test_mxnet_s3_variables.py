"""A user moving from an MXNet USE_S3 build changes nothing in their environment: S3_* variables work."""

from __future__ import annotations

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import CREDENTIALS, EmbeddedS3
from prefetchd_client import idx_iter

AWS_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def test_daemon_reads_s3_with_only_mxnets_variables(s3_server: EmbeddedS3, fashion_urls: dict[str, str]) -> None:
    env = {
        "S3_ENDPOINT": s3_server.endpoint_url,  # dmlc-core's form is a bare host (https); an http:// URL is kept
        "S3_ACCESS_KEY_ID": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "S3_SECRET_ACCESS_KEY": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "S3_REGION": "eu-west-1",
        "S3_IS_AWS": "0",
        "S3_VERIFY_SSL": "0",
        **dict.fromkeys(AWS_NAMES, ""),
    }
    with DaemonProcess(env=env) as daemon:
        with idx_iter(
            fashion_urls["t10k-images-idx3-ubyte"],
            fashion_urls["t10k-labels-idx1-ubyte"],
            batch_size=1000,
            socket_path=daemon.socket_path,
        ) as it:
            assert sum(len(label) for _, label in it) == 10_000
        log = daemon.log()
    line = next(line for line in log.splitlines() if "S3: endpoint=" in line)
    assert f"endpoint={s3_server.endpoint_url} region=eu-west-1 addressing=path verify_ssl=False" in line
    assert "explicit S3_*/AWS_* keys" in line
    for name in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_REGION", "S3_ENDPOINT", "S3_IS_AWS", "S3_VERIFY_SSL"):
        assert name in line
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in log
    assert CREDENTIALS["AWS_ACCESS_KEY_ID"] not in log


def test_daemon_logs_the_default_region_when_none_is_set(s3_server: EmbeddedS3) -> None:
    env = {**s3_server.environment(), "AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_CONFIG_FILE": "/nonexistent"}
    with DaemonProcess(env=env) as daemon:
        log = daemon.log()
    assert "no AWS region set (S3_REGION, AWS_REGION or a profile); using us-east-1" in log
