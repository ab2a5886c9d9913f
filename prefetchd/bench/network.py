"""The benchmarks' S3: nginx holding the objects, reached through the relay that models S3's network.

nginx serves the files at memory speed, so what the readers meet is the modelled network (a first-byte
wait per request, a pace per connection), not a slow server; the relay passes every byte and every
answer through as nginx gave it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..testing.daemon_process import DaemonProcess
from ..testing.embedded_s3 import CREDENTIALS
from ..testing.network_proxy import NetworkProxy
from ..testing.nginx_s3 import NginxS3

BUCKET = "bucket-name"
PREFIX = "bench"


@dataclass(frozen=True)
class BenchS3:
    nginx: NginxS3
    urls: dict[Path, str]  # each file's s3:// URL

    def key(self, path: Path) -> str:
        return self.urls[path].removeprefix(f"s3://{BUCKET}/")

    def network(self, latency_ms: float, megabytes_per_s: float) -> NetworkProxy:
        """The modelled network in front of nginx; `megabytes_per_s=0` and `latency_ms=0`: no shaping."""
        return NetworkProxy(self.nginx.endpoint_url, latency_ms=latency_ms, megabytes_per_s=megabytes_per_s, relay=True)


@contextlib.contextmanager
def bench_s3(paths: list[Path]) -> Iterator[BenchS3]:
    """nginx serving `paths` as s3://bucket-name/bench/<name> (linked, not copied)."""
    with NginxS3() as nginx:
        yield BenchS3(nginx, dict(zip(paths, nginx.upload_files(BUCKET, PREFIX, paths), strict=True)))


def daemon(endpoint_url: str, *args: str) -> DaemonProcess:
    """A `prefetchd serve` that reads S3 from `endpoint_url` (path-style, as for any custom endpoint)."""
    return DaemonProcess(env={**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint_url}, args=args)
