"""Compose without an engine: each service's command run here, in a stand-in for its image, as compose would run it.

An image is stood in for by what docker/Dockerfile puts in it, read with BuildKit's parser: a virtual
environment made by the target's own `pip install --no-deps -r <lock>` (uv, from its cache when it can),
the target's COPYs replayed into a staging root, and its ENV with that root in place of `/`. A service then
runs its entrypoint + command with the image's ENV overlaid by the service's resolved `environment` (as the
engine does), from its WORKDIR, with stand-ins for the compose network and volumes: MinIO's address
becomes the test's S3 server, each named volume's mount point a directory here, and an address a service
listens on in its own network namespace (`0.0.0.0:9464`) a free loopback port here.

Not emulated: the base image and its Debian packages (the host's Python and Fashion-MNIST cache stand in),
the uid switch (all run as the test's user, which is what the shared uid gives the containers), the shared PID
namespace (here all share one) and memory limits.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dockerfile

from prefetchd.testing.processes import stop_child
from tests.deploy.compose_cli import DOCKERFILE, MINIO_ENDPOINT, ROOT

# what the host lends every process: where to find programs and the dataset cache, and OpenBLAS's settings
PASSED_THROUGH = ("PATH", "HOME", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PREFETCHD_DOWNLOAD_DIR")
# a container's own network namespace has its ports to itself; here, where others listen too, any free port does
_LISTEN_EVERYWHERE = re.compile(r"^0\.0\.0\.0:\d+$")
_PIP_INSTALL = re.compile(r"pip install --no-deps --only-binary=:all: -r /tmp/(\S+)")


def _stages() -> dict[str, tuple[str, list[dockerfile.Command]]]:
    """Stage name → (what it is built FROM, its instructions)."""
    stages: dict[str, tuple[str, list[dockerfile.Command]]] = {}
    commands: list[dockerfile.Command] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd.upper() == "FROM":
            image, _as, name = command.value
            commands = []
            stages[name] = (image, commands)
        elif stages:
            commands.append(command)
    return stages


def _instructions(target: str) -> list[dockerfile.Command]:
    """The target's instructions, those of the stages it is built on first."""
    stages = _stages()
    parent, commands = stages[target]
    return [*(_instructions(parent) if parent in stages else []), *commands]


@dataclass
class ImageStandIn:
    """A Dockerfile target laid out under `root`: `python` is its venv's interpreter."""

    target: str
    root: Path
    python: Path
    env: dict[str, str]
    workdir: Path

    @classmethod
    def build(cls, target: str, scratch: Path) -> ImageStandIn:
        root = scratch / f"image-{target}"
        env: dict[str, str] = {}
        workdir = root
        python = Path()
        for command in _instructions(target):
            kind = command.cmd.upper()
            if kind == "RUN" and (match := _PIP_INSTALL.search(command.value[0])):
                python = _venv(root / "venv", ROOT / "requirements" / match.group(1))
            elif kind == "COPY" and not command.value[-1].startswith("/tmp/"):
                _copy(command.value[:-1], command.value[-1], root)
            elif kind == "ENV":
                pairs = command.value
                env.update({pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)})
            elif kind == "WORKDIR":
                workdir = root / command.value[0].lstrip("/")
        assert python.is_file(), f"target {target} installs no Python packages"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {key: value.replace("/opt/", f"{root}/opt/") for key, value in env.items()}
        return cls(target, root, python, env, workdir)


def _venv(directory: Path, lock: Path) -> Path:
    """A virtual environment holding exactly `lock`'s pins, installed as the image does (no dependencies)."""
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    install = [str(uv), "pip", "install", "--quiet", "--no-deps", "--python", str(python), "-r", str(lock)]
    if subprocess.run([*install, "--offline"], capture_output=True, timeout=300).returncode != 0:
        subprocess.run(install, check=True, capture_output=True, timeout=600)  # not in uv's cache yet
    return python


def _copy(sources: list[str], destination: str, root: Path) -> None:
    """COPY's rules for what the Dockerfile uses: several sources, or a trailing slash, go into a directory."""
    target = root / destination.lstrip("/")
    into_directory = destination.endswith("/") or len(sources) > 1
    for source in sources:
        path, place = ROOT / source, (target / Path(source).name if into_directory else target)
        place.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, place, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, place)


def _seconds(duration: str) -> float:
    """Compose's durations as `config` prints them: `10s`, `1m30s`, `500ms`."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


class Services:
    """Runs a resolved compose model's services as local processes (see the module's docstring)."""

    def __init__(self, model: dict[str, Any], endpoint_url: str, scratch: Path, volumes: Path) -> None:
        self.model = model
        self.endpoint_url = endpoint_url
        self.scratch = scratch
        self.volumes = volumes  # a short path: the control socket's must fit in 108 bytes
        self.logs = scratch / "logs"
        self.logs.mkdir()
        self.images: dict[str, ImageStandIn] = {}

    def image(self, name: str) -> ImageStandIn:
        target = self.model["services"][name]["build"]["target"]
        if target not in self.images:
            self.images[target] = ImageStandIn.build(target, self.scratch)
        return self.images[target]

    def _mounts(self, name: str) -> dict[str, str]:
        """Container path → a directory here, one per named volume, shared by the services that mount it."""
        mounts = {}
        for mount in self.model["services"][name].get("volumes", []):
            assert mount["type"] == "volume", f"{name}: only named volumes are emulated"
            local = self.volumes / mount["source"]
            local.mkdir(mode=0o700, exist_ok=True)
            mounts[mount["target"]] = str(local)
        return mounts

    def _translate(self, name: str, value: str) -> str:
        if _LISTEN_EVERYWHERE.match(value):
            return "127.0.0.1:0"
        value = value.replace(MINIO_ENDPOINT, self.endpoint_url)
        for target, local in self._mounts(name).items():
            if value == target or value.startswith(target + "/"):
                value = local + value[len(target) :]
        return value

    def argv(self, name: str, words: list[str]) -> list[str]:
        argv = [self._translate(name, word) for word in words]
        assert argv[0] == "python", f"{name}: {argv}"
        return [str(self.image(name).python), *argv[1:]]

    def command(self, name: str) -> list[str]:
        service = self.model["services"][name]
        return self.argv(name, [*(service.get("entrypoint") or []), *service["command"]])

    def environment(self, name: str) -> dict[str, str]:
        image = {key: self._translate(name, value) for key, value in self.image(name).env.items()}
        own = {key: self._translate(name, value) for key, value in self.model["services"][name]["environment"].items()}
        host = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
        return {**host, **image, **own, "PYTHONNOUSERSITE": "1"}

    def _popen_args(self, name: str, argv: list[str]) -> dict[str, Any]:
        return {"args": argv, "env": self.environment(name), "cwd": self.image(name).workdir}

    def run(self, name: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            **self._popen_args(name, self.command(name)), capture_output=True, text=True, timeout=timeout_s
        )

    @contextmanager
    def started(self, name: str) -> Iterator[subprocess.Popen[bytes]]:
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                **self._popen_args(name, self.command(name)), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            yield process
        finally:
            stop_child(process)

    def importable(self, name: str, *modules: str) -> list[str]:
        """Which of `modules` the service's image stand-in can import: its lock file's packages and COPYs only."""
        probe = f"import importlib.util as u; print(*[m for m in {modules!r} if u.find_spec(m)], sep=',')"
        result = subprocess.run(
            **self._popen_args(name, [str(self.image(name).python), "-c", probe]), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return [m for m in result.stdout.strip().split(",") if m]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def probe(self, name: str) -> subprocess.CompletedProcess[str]:
        """The service's healthcheck command, once, with its timeout."""
        check = self.model["services"][name]["healthcheck"]
        kind, *words = check["test"]
        assert kind == "CMD", f"{name}: {kind}"
        return subprocess.run(
            **self._popen_args(name, self.argv(name, words)),
            capture_output=True,
            text=True,
            timeout=_seconds(check["timeout"]),
        )

    def wait_healthy(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """Docker's rule: probe every `start_interval` during `start_period`, then `retries` more at `interval`."""
        check = self.model["services"][name]["healthcheck"]
        start_deadline = time.monotonic() + _seconds(check["start_period"])
        failures = 0
        while failures < check["retries"]:
            assert process.poll() is None, f"{name} exited {process.returncode}:\n{self.log(name)}"
            if self.probe(name).returncode == 0:
                return
            starting = time.monotonic() < start_deadline
            failures += 0 if starting else 1
            time.sleep(_seconds(check["start_interval"] if starting else check["interval"]))
        raise AssertionError(f"{name} never became healthy:\n{self.probe(name).stderr}\n{self.log(name)}")
