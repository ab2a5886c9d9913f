"""The README's Python examples run as written, against a real daemon and the test bucket."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prefetchd.testing.daemon_process import DaemonProcess

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 3


def _marks(example: str) -> list[pytest.MarkDecorator]:
    """What an example needs beyond the client: MXNet (the first environment) or torch (the numpy-2 one)."""
    needs = {"import mxnet": pytest.mark.mxnet, "import torch": pytest.mark.torch}
    return [mark for line, mark in needs.items() if line in example]


CASES = [pytest.param(example, id=f"example-{i}", marks=_marks(example)) for i, example in enumerate(EXAMPLES)]


@pytest.mark.parametrize("example", CASES)
def test_readme_example_runs(
    example: str, daemon: DaemonProcess, fashion_urls: dict[str, str], request: pytest.FixtureRequest
) -> None:
    assert "s3://bucket-name/training-data/" in example
    if "caltech_train.rec" in example:
        request.getfixturevalue("caltech_rec")
    result = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFETCHD_SOCKET": str(daemon.socket_path)},
    )
    assert result.returncode == 0, result.stderr
