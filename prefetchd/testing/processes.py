"""Stopping the child processes the test tools start (S3 server, network proxy, daemon): politely, then not."""

from __future__ import annotations

import signal
import subprocess


def stop_child(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
    """Send `sig`, wait up to `timeout_s`, then SIGKILL; closes its stdout pipe. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode
