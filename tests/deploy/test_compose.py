"""docker/compose.yaml as Docker Compose v5 reads it: valid, and wired the way docker/README.md says.

Every check reads the model `docker-compose config` resolves (schema-validated, variables interpolated,
anchors merged), not the YAML text, so what is checked is what `docker compose up` would run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose_cli import (
    COMPOSE_FILE,
    COMPOSE_VERSION,
    MINIO_ENDPOINT,
    compose_binary,
    resolved_model,
    run_compose,
)

SHARED_UID = "10001:10001"
OUR_SERVICES = ("seed", "prefetchd", "trainer")


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return resolved_model()


def _service(model: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = model["services"][name]
    return service


def test_the_validator_is_docker_compose_itself() -> None:
    result = run_compose("version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().lstrip("v") == COMPOSE_VERSION, f"{compose_binary()}: {result.stdout}"


def test_docker_compose_accepts_the_file_and_names_the_six_services(model: dict[str, Any]) -> None:
    assert model["name"] == "prefetchd"
    assert set(model["services"]) == {"minio", "seed", "prefetchd", "trainer", "prometheus", "grafana"}
    assert _service(model, "minio")["image"].startswith("minio/minio:RELEASE.")
    for name, target in (("seed", "seed"), ("prefetchd", "daemon"), ("trainer", "trainer")):
        build = _service(model, name)["build"]
        assert (build["dockerfile"], build["target"]) == ("docker/Dockerfile", target)
        assert Path(build["context"]) == COMPOSE_FILE.parents[1], "built from the repository root"


def test_a_broken_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("service_completed_successfully", "service_finished"))
    result = run_compose("config", "--quiet", compose_file=broken)
    assert result.returncode != 0
    assert "services.trainer.depends_on.seed.condition" in result.stderr


def test_daemon_and_trainer_share_the_socket_directory_and_the_uid(model: dict[str, Any]) -> None:
    daemon, trainer = _service(model, "prefetchd"), _service(model, "trainer")
    socket = daemon["environment"]["PREFETCHD_SOCKET"]
    assert trainer["environment"]["PREFETCHD_SOCKET"] == socket
    mounts = [{(m["type"], m["source"], m["target"]) for m in s["volumes"]} for s in (daemon, trainer)]
    assert mounts[0] == mounts[1] == {("volume", "prefetchd-socket", str(Path(socket).parent))}
    volume = model["volumes"]["prefetchd-socket"]
    assert volume["driver_opts"]["type"] == "tmpfs"
    options = dict(option.partition("=")[::2] for option in volume["driver_opts"]["o"].split(","))
    assert f"{options['uid']}:{options['gid']}" == SHARED_UID, "the volume belongs to the uid both run as"
    assert options["mode"] == "0700", "the daemon refuses a socket directory others may write to"


def test_our_services_run_as_the_shared_non_root_uid(model: dict[str, Any]) -> None:
    for name in OUR_SERVICES:
        user = _service(model, name).get("user", "")
        assert user == SHARED_UID, f"{name} runs as {user or 'the image default'}"
        assert user.split(":")[0] not in ("0", "root")


def test_start_order_waits_for_health_and_for_the_upload(model: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in _service(model, name).get("depends_on", {}).items()}

    assert conditions("seed") == {"minio": "service_healthy"}
    assert conditions("prefetchd") == {"minio": "service_healthy"}
    assert conditions("trainer") == {"prefetchd": "service_healthy", "seed": "service_completed_successfully"}
    assert _service(model, "seed")["restart"] == "no", "a one-shot"


def test_the_store_and_the_daemon_have_healthchecks_that_probe_them(model: dict[str, Any]) -> None:
    assert _service(model, "minio")["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    probe = _service(model, "prefetchd")["healthcheck"]
    assert probe["test"][:3] == ["CMD", "python", "-c"]
    assert "Connection.connect(os.environ['PREFETCHD_SOCKET']" in probe["test"][3], "a real handshake"
    for name in ("minio", "prefetchd"):
        check = _service(model, name)["healthcheck"]
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name


def test_credentials_come_from_the_minio_root_user_and_stay_out_of_the_trainer() -> None:
    model = resolved_model({"MINIO_ROOT_USER": "alice", "MINIO_ROOT_PASSWORD": "alice-secret-1"})
    minio = _service(model, "minio")["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == ("alice", "alice-secret-1")
    for name in ("seed", "prefetchd"):
        env = _service(model, name)["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("alice", "alice-secret-1"), name
        assert env["AWS_ENDPOINT_URL_S3"] == MINIO_ENDPOINT, name
    trainer = _service(model, "trainer")["environment"]
    assert not [key for key in trainer if key.startswith(("AWS_", "S3_"))], "credentials stay in the daemon"
    assert trainer["PREFETCHD_AUTOSTART"] == "0"


def test_the_ring_needs_no_ipc_namespace_or_shm_size_but_the_daemon_has_a_memory_limit(
    model: dict[str, Any],
) -> None:
    for name in OUR_SERVICES:
        service = _service(model, name)
        assert "ipc" not in service and "shm_size" not in service, f"{name}: the ring is a memfd, not /dev/shm"
    assert int(_service(model, "prefetchd")["mem_limit"]) >= 512 << 20, "rings and cache are charged to the daemon"
    assert _service(model, "trainer")["pid"] == "service:prefetchd", "the daemon must see the trainer's pid"


def test_the_trainer_run_is_sized_by_variables(model: dict[str, Any]) -> None:
    command = _service(model, "trainer")["command"]
    assert command[command.index("--epochs") + 1] == "1"
    assert command[command.index("--batches") + 1] == "0", "the whole epoch by default"
    short = _service(resolved_model({"TRAIN_BATCHES": "20"}), "trainer")["command"]
    assert short[short.index("--batches") + 1] == "20"
