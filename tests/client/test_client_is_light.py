"""The client needs numpy and the standard library only: the daemon's dependencies never load in a trainer."""

from __future__ import annotations

import json
import subprocess
import sys

from prefetchd.testing.daemon_process import DaemonProcess

HEAVY = ("aiobotocore", "aiohttp", "uvloop", "botocore", "boto3", "prefetchd", "mxnet", "torch")

PROGRAM = """
import json, sys
from prefetchd_client import idx_iter
with idx_iter(sys.argv[1], sys.argv[2], batch_size=100, socket_path=sys.argv[3]) as it:
    batches = sum(1 for _ in it)
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[4])))
print(json.dumps({"batches": batches, "loaded": loaded}))
"""


def test_a_trainer_that_iterates_loads_none_of_the_daemons_dependencies(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROGRAM,
            fashion_urls["t10k-images-idx3-ubyte"],
            fashion_urls["t10k-labels-idx1-ubyte"],
            str(daemon.socket_path),
            json.dumps(HEAVY),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {"batches": 100, "loaded": []}
