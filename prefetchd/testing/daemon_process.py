"""`prefetchd serve` as a child process, ready when it says so on a pipe (never a sleep)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .processes import stop_child

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http_url: str) -> Metrics:
    """A daemon's `/metrics`, as {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class DaemonProcess:
    """`with DaemonProcess(env=...) as daemon:` runs a daemon on a private socket until the block ends."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        socket_path: Path | None = None,
        log_path: Path | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self._own_dir = None if socket_path else tempfile.mkdtemp(prefix="pfd-")
        self.socket_path = socket_path or Path(self._own_dir or "") / "control.sock"
        self.log_path = log_path or self.socket_path.parent / "daemon.log"
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.args = args
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.http_url = ""

    def metrics(self) -> Metrics:
        return scrape(self.http_url)

    def until_no_streams(self, timeout_s: float = 10.0) -> Metrics:
        """The metrics once every stream has ended (the daemon ends one when it reads its client's close)."""
        deadline = time.monotonic() + timeout_s
        while (metrics := self.metrics())["prefetchd_streams", ()] and time.monotonic() < deadline:
            time.sleep(0.02)
        return metrics

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def start(self) -> None:
        read_end, write_end = os.pipe()
        command = [
            sys.executable,
            "-m",
            "prefetchd",
            "serve",
            "--socket",
            str(self.socket_path),
            "--ready-fd",
            str(write_end),
            # many daemons run at once in the tests: each takes a free port unless told one
            *(() if "--http" in self.args else ("--http", "127.0.0.1:0")),
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, pass_fds=(write_end,), env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        os.close(write_end)
        try:
            answer = self._read_line(read_end)
        finally:
            os.close(read_end)
        if not answer.startswith("ready"):
            self.stop()
            raise RuntimeError(f"prefetchd did not start ({answer.strip() or 'no answer'}):\n{self.log()}")
        fields = dict(word.split("=", 1) for word in answer.split()[1:] if "=" in word)
        self.http_url = fields.get("http", "")  # where /metrics answers; "" when the HTTP side is off

    def _read_line(self, fd: int) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        data = b""
        while b"\n" not in data and (remaining := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], remaining)[0]:
                break
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        """Signal the daemon and wait for it; returns its exit code."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        return stop_child(process, sig, timeout_s)
