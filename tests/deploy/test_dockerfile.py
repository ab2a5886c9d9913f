"""docker/Dockerfile as BuildKit's own parser reads it: the targets compose builds, pinned inputs, a non-root user.

No Docker engine runs here, so no image is built; these checks hold the file to what docker/README.md says.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

from tests.deploy.compose_cli import DOCKERFILE, ROOT, resolved_model

PINNED_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")


@dataclass
class Stage:
    name: str
    parent: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd.upper() == instruction.upper()]


def _stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd.upper() == "FROM":
            image, _as, name = command.value
            current = stages[name] = Stage(name, image)
        elif current is not None:
            current.commands.append(command)
    return stages


STAGES = _stages()


def _chain(name: str) -> list[Stage]:
    """The stage and the stages it is built on, base first."""
    stage = STAGES[name]
    return [*(_chain(stage.parent) if stage.parent in STAGES else []), stage]


def _last(name: str, instruction: str) -> dockerfile.Command:
    found = [c for stage in _chain(name) for c in stage.all(instruction)]
    assert found, f"target {name} has no {instruction}"
    return found[-1]


def _arg_defaults() -> dict[str, str]:
    commands = dockerfile.parse_file(str(DOCKERFILE))
    return dict(c.value[0].split("=", 1) for c in commands if c.cmd.upper() == "ARG" and "=" in c.value[0])


def test_every_target_compose_builds_is_in_the_dockerfile() -> None:
    targets = {s["build"]["target"] for s in resolved_model()["services"].values() if "build" in s}
    assert targets == {"daemon", "seed", "trainer"}
    assert targets <= set(STAGES)


def test_the_base_is_a_slim_python_3_11_pinned_to_a_patch_release() -> None:
    assert STAGES["base"].parent == "${PYTHON_IMAGE}"
    assert PINNED_PYTHON.match(_arg_defaults()["PYTHON_IMAGE"])
    assert "digest" in DOCKERFILE.read_text(), "say why the base is not pinned by digest"


@pytest.mark.parametrize("target", ["daemon", "seed", "trainer"])
def test_each_image_runs_as_the_uid_compose_gives_it(target: str) -> None:
    service = next(s for s in resolved_model()["services"].values() if s.get("build", {}).get("target") == target)
    assert _last(target, "user").value == (service["user"],)
    assert service["user"].split(":")[0] not in ("0", "root")


def test_the_daemon_image_checks_its_health_as_compose_does() -> None:
    check = _last("daemon", "healthcheck")
    compose = resolved_model()["services"]["prefetchd"]["healthcheck"]["test"]
    assert check.json and list(check.value) == compose
    assert _last("seed", "healthcheck").value == ("NONE",), "the one-shot must not inherit the daemon's check"


@pytest.mark.parametrize(("target", "lock"), [("daemon", "lock-daemon.txt"), ("trainer", "lock-trainer.txt")])
def test_python_packages_come_only_from_the_images_lock(target: str, lock: str) -> None:
    installs = [c.value[0] for stage in _chain(target) for c in stage.all("run") if "pip install" in c.value[0]]
    assert installs == [f"pip install --no-deps --only-binary=:all: -r /tmp/{lock} && rm /tmp/{lock}"]


def _pins(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if "==" in line and not line.startswith(" ")]
    return dict(line.split("==", 1) for line in lines)


@pytest.mark.parametrize(("lock", "source"), [("lock-daemon.txt", "lock-numpy2.txt"), ("lock-trainer.txt", "lock.txt")])
def test_the_images_locks_pin_what_the_suite_tests(lock: str, source: str) -> None:
    image, suite = _pins(ROOT / "requirements" / lock), _pins(ROOT / "requirements" / source)
    assert image and {name: suite.get(name) for name in image} == image


def test_the_daemon_image_has_no_mxnet_and_the_trainer_image_no_daemon_dependencies() -> None:
    daemon, trainer = _pins(ROOT / "requirements/lock-daemon.txt"), _pins(ROOT / "requirements/lock-trainer.txt")
    assert "mxnet" not in daemon and {"aiobotocore", "uvloop", "opencv-python-headless"} <= set(daemon)
    assert "mxnet" in trainer and not {"aiobotocore", "botocore", "aiohttp", "uvloop"} & set(trainer)


def test_debian_packages_are_pinned() -> None:
    for stage in STAGES.values():
        for run in stage.all("run"):
            for install in re.findall(r"apt-get install ([^&]+)", run.value[0]):
                packages = [word for word in install.split() if not word.startswith("-")]
                assert packages and all("=" in p for p in packages), f"{stage.name}: {install}"


def test_what_the_images_copy_exists_and_the_build_context_sends_it() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    sent = {line[1:] for line in ignore if line.startswith("!")}
    for stage in STAGES.values():
        for copy in stage.all("copy"):
            for source in copy.value[:-1]:
                assert (ROOT / source).exists(), source
                assert any(source == s or source.startswith(s + "/") for s in sent), f"{source} is not sent"


def test_the_trainer_image_holds_every_module_its_trainer_imports() -> None:
    copied = {
        Path(source)
        for copy in STAGES["trainer"].all("copy")
        for source in copy.value[:-1]
        if source.startswith("prefetchd/")
    }
    for module in (p for p in copied if p.name != "__init__.py"):
        for node in ast.walk(ast.parse((ROOT / module).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert module.parent / f"{node.module}.py" in copied, f"{module} imports .{node.module}"
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert not [n for n in names if n.startswith("prefetchd.") or n == "prefetchd"], f"{module}: {names}"
