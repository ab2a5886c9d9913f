"""Find Fashion-MNIST (real IDX files) for the demo and the tests, the way a user elsewhere would get it.

In order: a local copy (`$PREFETCHD_DATASET_DIR`), Debian's `dataset-fashion-mnist` package (installed, or
fetched with `apt-get download` and unpacked into the cache), and the dataset's public download. Files are
gunzipped into the cache once and checked by size.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

log = logging.getLogger("prefetchd.testing.datasets")

FILES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("usr/share/datasets/fashion-mnist")
PUBLIC_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{name}.gz"
DATASET_ENV = "PREFETCHD_DATASET_DIR"


class DatasetUnavailable(RuntimeError):
    """None of the places Fashion-MNIST can come from worked; the message lists what was tried."""


def cache_root() -> Path:
    """Where downloads are unpacked; not `$PREFETCHD_CACHE_DIR`, which is the daemon's `--cache-dir`."""
    return Path(os.environ.get("PREFETCHD_DOWNLOAD_DIR") or Path.home() / ".cache" / "prefetchd")


def fashion_mnist(cache: Path | None = None) -> Path:
    """A directory holding the four uncompressed Fashion-MNIST IDX files."""
    target = (cache or cache_root()) / "fashion-mnist"
    if _complete(target):
        return target
    tried = []
    for name, source in (
        (f"${DATASET_ENV}", os.environ.get(DATASET_ENV)),
        ("the installed Debian package", f"/{DEBIAN_DIR}"),
    ):
        if source and _has_files(Path(source)):
            return _materialize(Path(source), target)
        tried.append(f"{name} ({source or 'unset'})")
    try:
        unpacked = _apt_download(target.parent)
        try:
            return _materialize(unpacked / DEBIAN_DIR, target)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        tried.append(f"apt-get download {DEBIAN_PACKAGE} ({exc})")
    try:
        return _public_download(target)
    except OSError as exc:
        tried.append(f"{PUBLIC_URL.format(name='*')} ({exc})")
    raise DatasetUnavailable("Fashion-MNIST not found; tried: " + "; ".join(tried))


def _complete(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size == size for name, size in FILES.items()
    )


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() or (directory / f"{name}.gz").is_file() for name in FILES)


def _materialize(source: Path, target: Path) -> Path:
    """Copy (gunzipping where needed) the files from `source` into `target`, atomically per file."""
    target.mkdir(parents=True, exist_ok=True)
    for name, size in FILES.items():
        destination = target / name
        if destination.is_file() and destination.stat().st_size == size:
            continue
        plain, packed = source / name, source / f"{name}.gz"
        with tempfile.NamedTemporaryFile(dir=target, delete=False) as out:
            if plain.is_file():
                with open(plain, "rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                with gzip.open(packed, "rb") as src:
                    shutil.copyfileobj(src, out)
        os.chmod(out.name, 0o644)
        os.replace(out.name, destination)
        if destination.stat().st_size != size:
            raise OSError(f"{destination} has {destination.stat().st_size} bytes, expected {size}")
    log.info("Fashion-MNIST from %s in %s", source, target)
    return target


def _apt_download(workdir: Path) -> Path:
    """Fetch Debian's package without installing it (no root needed) and unpack it under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        subprocess.run(
            ["apt-get", "download", DEBIAN_PACKAGE], cwd=scratch, check=True, capture_output=True, timeout=300
        )
        (deb,) = Path(scratch).glob("*.deb")
        unpacked = workdir / "debian-package"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True, timeout=300)
    return unpacked


def _public_download(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        for name in FILES:
            with urllib.request.urlopen(PUBLIC_URL.format(name=name), timeout=60) as response:
                (Path(scratch) / f"{name}.gz").write_bytes(response.read())
        return _materialize(Path(scratch), target)
