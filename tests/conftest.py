"""Fixtures with real parts: moto's S3 server in a child process, `prefetchd serve` processes, real data.

Tests start daemons explicitly, so client autostart is off unless a test turns it on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["PREFETCHD_AUTOSTART"] = "0"

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.datasets import FILES, fashion_mnist
from prefetchd.testing.embedded_s3 import EmbeddedS3

BUCKET = "bucket-name"
PREFIX = "training-data"


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """Debian's Fashion-MNIST IDX files (found, fetched or downloaded once)."""
    return fashion_mnist()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    with EmbeddedS3() as server:
        yield server


@pytest.fixture(scope="session")
def fashion_urls(s3_server: EmbeddedS3, fashion_dir: Path) -> dict[str, str]:
    """The four Fashion-MNIST files in s3://bucket-name/training-data/, by file name."""
    urls = s3_server.upload_files(BUCKET, PREFIX, [fashion_dir / name for name in FILES])
    return {url.rsplit("/", 1)[1]: url for url in urls}


@pytest.fixture(scope="session")
def daemon(s3_server: EmbeddedS3) -> Iterator[DaemonProcess]:
    """One daemon shared by the tests that only need a working one."""
    with DaemonProcess(env=s3_server.environment()) as process:
        yield process
        assert process.process is not None and process.process.poll() is None, "the shared daemon died"


@pytest.fixture
def fresh_daemon(s3_server: EmbeddedS3) -> Iterator[DaemonProcess]:
    """A daemon of this test's own, for tests that kill it or read its log."""
    with DaemonProcess(env=s3_server.environment()) as process:
        yield process


@dataclass
class Objects:
    """Puts test objects into the S3 server under a per-test prefix."""

    server: EmbeddedS3
    prefix: str

    def put(self, name: str, data: bytes) -> str:
        client = self.server.client()
        key = f"{self.prefix}/{name}"
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        return f"s3://{BUCKET}/{key}"


@pytest.fixture
def objects(s3_server: EmbeddedS3, fashion_urls: dict[str, str], request: pytest.FixtureRequest) -> Objects:
    return Objects(s3_server, f"tests/{request.node.name}")


@pytest.fixture(scope="session")
def caltech_rec(s3_server: EmbeddedS3, fashion_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small stand-in for the seed's caltech_train.rec (photo-sized JPEGs) in the training-data folder."""
    import numpy as np

    from prefetchd.testing.image_records import images, write_rec

    pictures = list(images(10, np.random.default_rng(7), [(300, 400), (260, 300)]))
    files = write_rec(
        tmp_path_factory.mktemp("caltech") / "caltech_train.rec", pictures, [float(i % 3) for i in range(10)]
    )
    return s3_server.upload_files(BUCKET, "training-data", [files.rec, files.idx])[0]
