"""The compose stack's trainer: MXNet's MNIST conv net on Fashion-MNIST from s3://, through a running daemon.

    python -m prefetchd.testing.train_mnist s3://bucket-name/training-data/ --epochs 1

It is MXNet's classic S3 recipe plus the one-line opt-in: `mx.io.MNISTIter` over s3:// paths, routed to the
daemon at `$PREFETCHD_SOCKET` by `import prefetchd_client.mxnet_s3`. `--batches` caps each training epoch
(the deployment test trains a few dozen batches, not 600); validation always covers the whole test set.
The exit code is 1 when the accuracy is below `--min-accuracy`, so a broken pipeline fails the service.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .mnist_net import conv_net

BATCH_SIZE = 100


def iterators(mx: Any, url: str, batch_size: int, batches: int) -> tuple[Any, Any]:
    """Training and validation `mx.io.MNISTIter`s over the IDX files under `url`."""
    import prefetchd_client.mxnet_s3  # noqa: F401  the one-line opt-in

    root = url.rstrip("/") + "/"
    common = {"batch_size": batch_size, "silent": True}
    train = mx.io.MNISTIter(
        image=f"{root}train-images-idx3-ubyte", label=f"{root}train-labels-idx1-ubyte", shuffle=True, **common
    )
    val = mx.io.MNISTIter(
        image=f"{root}t10k-images-idx3-ubyte", label=f"{root}t10k-labels-idx1-ubyte", shuffle=False, **common
    )
    return (mx.io.ResizeIter(train, batches) if batches else train), val


def train(url: str, *, epochs: int, batches: int, batch_size: int = BATCH_SIZE, seed: int = 42) -> float:
    """Fit the conv net for `epochs` with SGD from a seeded Xavier init; returns the validation accuracy."""
    import mxnet as mx
    import numpy as np

    mx.random.seed(seed)
    np.random.seed(seed)
    train_iter, val_iter = iterators(mx, url, batch_size, batches)
    module = mx.mod.Module(conv_net(mx), context=mx.cpu(), label_names=[train_iter.provide_label[0].name])
    module.fit(
        train_iter,
        eval_data=val_iter,
        optimizer="sgd",
        optimizer_params={"learning_rate": 0.1},
        initializer=mx.init.Xavier(),
        num_epoch=epochs,
        batch_end_callback=mx.callback.Speedometer(batch_size, 100),
    )
    return float(dict(module.score(val_iter, "acc"))["accuracy"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefetchd.testing.train_mnist",
        description="Train MXNet's MNIST conv net on the IDX files under an s3:// prefix, through prefetchd.",
    )
    parser.add_argument("url", help="the prefix holding the four IDX files, e.g. s3://bucket-name/training-data/")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default: 1)")
    parser.add_argument("--batches", type=int, default=0, help="batches per training epoch; 0 = all (default)")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="exit 1 below this validation accuracy")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batches < 0:
        parser.error("--epochs must be at least 1 and --batches at least 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    accuracy = train(args.url, epochs=args.epochs, batches=args.batches)
    print(f"validation accuracy {accuracy:.4f} after {args.epochs} epoch(s) from {args.url} through prefetchd")
    return 0 if accuracy >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
