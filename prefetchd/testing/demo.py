"""`prefetchd demo`: the whole path on one machine with no AWS account.

An embedded S3 server gets Fashion-MNIST, a daemon starts beside it, one epoch streams through the client
with the trainer doing nothing (the pipeline's throughput), then the seed's conv net trains one epoch from
s3:// through `mx.io.MNISTIter` (routed by `import prefetchd_client.mxnet_s3`) and is compared with the
same training on the local files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .daemon_process import DaemonProcess
from .datasets import FILES, fashion_mnist
from .embedded_s3 import EmbeddedS3

BUCKET = "bucket-name"
PREFIX = "training-data"


def run_demo(say: Callable[[str], None] = print) -> dict[str, float]:
    directory = fashion_mnist()
    say(f"[1/5] Fashion-MNIST: {directory}")
    with EmbeddedS3() as s3:
        urls = s3.upload_files(BUCKET, PREFIX, [directory / name for name in FILES])
        say(f"[2/5] S3 server (moto) at {s3.endpoint_url}; uploaded {len(urls)} objects to s3://{BUCKET}/{PREFIX}/")
        with DaemonProcess(env=s3.environment()) as daemon:
            say(f"[3/5] prefetchd daemon pid {daemon.pid} listening at {daemon.socket_path}")
            rate, seconds = stream_one_epoch(daemon.socket_path)
            say(
                f"[4/5] pipeline: one epoch of 60000 images streamed through the client in {seconds:.2f} s "
                f"= {rate:,.0f} samples/s (trainer doing nothing)"
            )
            local, remote = train_both(directory, daemon.socket_path)
            say(
                f"[5/5] conv net, one epoch: validation accuracy {remote:.4f} from s3:// through prefetchd, "
                f"{local:.4f} from local files with mx.io.MNISTIter (difference {abs(local - remote) * 100:.2f} points)"
            )
    return {"samples_per_s": rate, "epoch_s": seconds, "accuracy_s3": remote, "accuracy_local": local}


def _url(name: str) -> str:
    return f"s3://{BUCKET}/{PREFIX}/{name}"


def stream_one_epoch(socket_path: Path) -> tuple[float, float]:
    from prefetchd_client import idx_iter

    with idx_iter(
        _url("train-images-idx3-ubyte"),
        _url("train-labels-idx1-ubyte"),
        batch_size=100,
        socket_path=socket_path,
        autostart=False,
    ) as batches:
        started = time.perf_counter()
        samples = sum(len(label) for _, label in batches)
        seconds = time.perf_counter() - started
    return samples / seconds, seconds


def train_both(directory: Path, socket_path: Path) -> tuple[float, float]:
    import os

    import mxnet as mx

    from .mnist_net import fit_one_epoch

    def iterators(root: str) -> tuple[object, object]:
        common = {"batch_size": 100, "shuffle": False, "silent": True}
        train = mx.io.MNISTIter(
            image=f"{root}train-images-idx3-ubyte", label=f"{root}train-labels-idx1-ubyte", **common
        )
        val = mx.io.MNISTIter(image=f"{root}t10k-images-idx3-ubyte", label=f"{root}t10k-labels-idx1-ubyte", **common)
        return train, val

    local = fit_one_epoch(mx, *iterators(f"{directory}/"))
    os.environ["PREFETCHD_SOCKET"] = str(socket_path)
    import prefetchd_client.mxnet_s3  # noqa: F401  the one-line opt-in

    remote = fit_one_epoch(mx, *iterators(f"s3://{BUCKET}/{PREFIX}/"))
    return local, remote
