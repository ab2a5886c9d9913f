"""A daemon behind a faulty S3: the fault proxy in front of the moto server, and no epoch cache, so every
epoch's ranges go through the faults.

Small ranges (32 KiB) make every epoch a few hundred GETs, so each fault kind comes several times per test.
The decisions depend on the seed and the requests only (not their interleaving): a failure replays with the
same SEED and FAULTS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.fault_plan import FaultRates
from prefetchd.testing.fault_proxy import FaultProxy

FAULTS = FaultRates(
    slowdown=0.05, internal_error=0.02, reset=0.02, truncate=0.02, latency=0.5, latency_ms=5.0, jitter_ms=40.0
)
SEED = int(os.environ.get("PREFETCHD_FAULT_SEED", "6"))  # another seed explores; this one is checked to hit every kind
CHUNK_SIZE = "32KiB"


@pytest.fixture(scope="module")
def fault_proxy(s3_server: EmbeddedS3) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url, FAULTS, seed=SEED) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def faulty_daemon(s3_server: EmbeddedS3, fault_proxy: FaultProxy) -> Iterator[DaemonProcess]:
    """A daemon whose S3 is the fault proxy, with the epoch cache off and 32 KiB ranges."""
    env = {
        **s3_server.environment(),
        "AWS_ENDPOINT_URL_S3": fault_proxy.endpoint_url,
        "PREFETCHD_MIN_CHUNK_BYTES": "16KiB",
    }
    args = ("--cache-size", "0", "--chunk-size", CHUNK_SIZE, "--decode-processes", "1")
    with DaemonProcess(env=env, args=args) as process:
        yield process
        assert process.process is not None and process.process.poll() is None, "the daemon behind faults died"
