"""A real S3 HTTP endpoint with no AWS account: moto's server mode in a child process on loopback.

Used by `prefetchd demo` and the test fixtures. The server picks a free port itself and prints it; we wait
for that line (readiness is the server saying so, not a sleep). Its request log is drained by a thread
and kept for failure reports.
"""

from __future__ import annotations

import collections
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .processes import stop_child
from .seed_bucket import upload_files

if TYPE_CHECKING:
    from .self_signed import Certificates

_RUNNING = re.compile(r"Running on (https?://[\d.]+:\d+)")

# moto accepts any credentials; these make the AWS credential chain resolve without touching ~/.aws
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "prefetchd-test-key",
    "AWS_SECRET_ACCESS_KEY": "prefetchd-test-secret",
    "AWS_REGION": "us-east-1",
}


class EmbeddedS3:
    """`with EmbeddedS3() as s3:` gives a running server at `s3.endpoint_url`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        start_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
        certificates: Certificates | None = None,
    ) -> None:
        self.host = host
        self.certificates = certificates  # serve https with these (prefetchd.testing.self_signed)
        self.extra_env = env or {}
        self.start_timeout_s = start_timeout_s
        self.endpoint_url = ""
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self._process: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None

    def __enter__(self) -> EmbeddedS3:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", "0", *self._tls_arguments()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
            env=env,
        )
        try:
            self.endpoint_url = self._wait_for_address()
        except BaseException:
            self.__exit__()
            raise
        self._drain = threading.Thread(target=self._drain_output, name="moto-log", daemon=True)
        self._drain.start()
        return self

    def _tls_arguments(self) -> list[str]:
        if self.certificates is None:
            return []
        return ["--ssl-cert", str(self.certificates.certificate_path), "--ssl-key", str(self.certificates.key_path)]

    def _wait_for_address(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout_s
        pending = b""
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                break
            data = os.read(fd, 4096)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                self.log.append(line)
                match = _RUNNING.search(line)
                if match:
                    return match.group(1)
        raise RuntimeError("moto's S3 server did not start:\n" + "\n".join(self.log))

    def _drain_output(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            self.log.append(raw.decode(errors="replace").rstrip())

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_child(self._process)
            self._process = None

    def environment(self) -> dict[str, str]:
        """What a daemon needs in its environment to use this server."""
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint_url}
        if self.certificates is not None:
            env["AWS_CA_BUNDLE"] = str(self.certificates.ca_path)
        return env

    def client(self) -> Any:
        """A plain botocore client, for putting data in place (tests and the demo)."""
        import botocore.session

        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            verify=str(self.certificates.ca_path) if self.certificates else None,
        )

    def upload_files(self, bucket: str, prefix: str, paths: list[Path]) -> list[str]:
        """Create `bucket` if needed and upload `paths` under `prefix`; returns their s3:// URLs."""
        return upload_files(self.client(), bucket, prefix, paths)
