"""Every command in docker/compose.yaml, run as compose would run it, end to end against moto instead of MinIO.

No Docker engine runs here: `tests.deploy.emulation` runs each service's process on this machine, in a stand-in
for its image built from docker/Dockerfile's own lock file, COPYs and ENV, with exactly the environment
compose resolves for it, in the order and under the conditions its `depends_on` names: the one-shot upload
must exit 0, then the daemon must pass its own healthcheck, then the trainer trains through it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from prefetchd.testing.embedded_s3 import EmbeddedS3
from tests.deploy.compose_cli import resolved_model
from tests.deploy.emulation import Services

pytestmark = [pytest.mark.mxnet, pytest.mark.slow]

TRAIN_BATCHES = "80"  # of 600: 0.76 here, far from the 0.5 the trainer exits 1 under; seconds on two cores


def test_the_compose_services_upload_serve_and_train_end_to_end(
    s3_server: EmbeddedS3, fashion_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model = resolved_model({"TRAIN_BATCHES": TRAIN_BATCHES})
    volumes = Path(tempfile.mkdtemp(prefix="pfd-"))
    request.addfinalizer(lambda: shutil.rmtree(volumes, ignore_errors=True))
    services = Services(model, s3_server.endpoint_url, tmp_path, volumes)
    assert model["services"]["trainer"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"
    assert model["services"]["trainer"]["depends_on"]["prefetchd"]["condition"] == "service_healthy"

    assert services.importable("prefetchd", "mxnet", "moto", "pytest", "aiobotocore") == ["aiobotocore"]
    assert services.importable("trainer", "mxnet", "botocore", "aiohttp", "prefetchd.serve") == ["mxnet"]

    seed = services.run("seed", timeout_s=120)
    assert seed.returncode == 0, seed.stdout + seed.stderr
    assert "uploaded 4 objects" in seed.stdout and "to s3://bucket-name/training-data/" in seed.stdout

    assert services.probe("prefetchd").returncode != 0, "no daemon yet: its healthcheck must fail"
    with services.started("prefetchd") as daemon:
        services.wait_healthy("prefetchd", daemon)
        trainer = services.run("trainer", timeout_s=240)
        assert trainer.returncode == 0, trainer.stdout + trainer.stderr + services.log("prefetchd")
        assert daemon.poll() is None, services.log("prefetchd")
    assert daemon.returncode == 0, f"SIGTERM is a clean stop:\n{services.log('prefetchd')}"

    done = re.search(
        r"validation accuracy (0\.\d+) after 1 epoch\(s\) from s3://bucket-name/training-data/", trainer.stdout
    )
    assert done, trainer.stdout + trainer.stderr
    assert float(done.group(1)) > 0.5, "well past chance (0.1) after 80 batches"
    assert len(re.findall(r"stream \d+ opened", services.log("prefetchd"))) >= 2, "training and validation streams"
