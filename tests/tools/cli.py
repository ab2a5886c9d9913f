"""Runs the `prefetchd` command as a user would: a child process with the daemon's S3 environment."""

from __future__ import annotations

import os
import subprocess
import sys

from prefetchd.testing.embedded_s3 import EmbeddedS3


def run_prefetchd(s3_server: EmbeddedS3, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **s3_server.environment()}
    env.pop("PREFETCHD_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "prefetchd", *args], capture_output=True, text=True, timeout=timeout_s, env=env
    )
