"""`make demo`'s command does the whole demo on this machine, with no AWS account."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.mxnet, pytest.mark.slow]


def test_demo_trains_from_s3_and_matches_local_accuracy() -> None:
    result = subprocess.run([sys.executable, "-m", "prefetchd", "demo"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(
        r"S3 server \(moto\) at http://127\.0\.0\.1:\d+; uploaded 4 objects to s3://bucket-name/training-data/", out
    )
    assert re.search(r"pipeline: one epoch of 60000 images streamed .* = [\d,]+ samples/s", out)
    match = re.search(r"validation accuracy (0\.\d+) from s3:// through prefetchd, (0\.\d+) from local files", out)
    assert match, out
    remote, local = map(float, match.groups())
    assert local > 0.75
    assert abs(remote - local) <= 0.005
