"""Training with real MXNet from s3:// through prefetchd, compared with MXNet reading the local files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import pytest

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.mnist_net import fit_one_epoch
from prefetchd_client import MNISTIter

pytestmark = [pytest.mark.mxnet, pytest.mark.slow]

RECIPE = Path(__file__).with_name("conv_recipe.py")


def test_seed_conv_net_reaches_the_local_accuracy_from_s3(
    daemon: DaemonProcess, fashion_dir: Path, fashion_urls: dict[str, str]
) -> None:
    def iterators(image: str, label: str, val_image: str, val_label: str, make: type) -> tuple[object, object]:
        common = {"batch_size": 100, "shuffle": False, "silent": True}
        extra = {"socket_path": str(daemon.socket_path)} if make is MNISTIter else {}
        return make(image=image, label=label, **common, **extra), make(
            image=val_image, label=val_label, **common, **extra
        )

    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    local = fit_one_epoch(mx, *iterators(*(str(fashion_dir / n) for n in names), make=mx.io.MNISTIter))
    remote = fit_one_epoch(mx, *iterators(*(fashion_urls[n] for n in names), make=MNISTIter))
    assert local > 0.75, "the reference run itself must learn"
    assert abs(local - remote) <= 0.005


def _run_recipe(root: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RECIPE), root], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_mxnets_s3_recipe_runs_on_pip_mxnet_through_the_one_line_opt_in(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    root = fashion_urls["train-images-idx3-ubyte"].rsplit("/", 1)[0] + "/"
    assert root == "s3://bucket-name/training-data/"
    result = _run_recipe(root, {"PREFETCHD_SOCKET": str(daemon.socket_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MNISTIter: load 60000 images, shuffle=1, shape=[100,1,28,28]" in result.stderr
    assert "final accuracy = " in result.stdout


def test_without_the_opt_in_pip_mxnet_refuses_s3(fashion_urls: dict[str, str]) -> None:
    with pytest.raises(mx.base.MXNetError, match="Please compile with DMLC_USE_S3=1"):
        mx.io.MNISTIter(image=fashion_urls["t10k-images-idx3-ubyte"], label=fashion_urls["t10k-labels-idx1-ubyte"])


def test_opt_in_routes_only_s3_paths_and_can_be_undone(daemon: DaemonProcess, fashion_dir: Path) -> None:
    import prefetchd_client.mxnet_s3 as mxnet_s3

    mxnet_s3.enable()
    try:
        local = mx.io.MNISTIter(
            image=str(fashion_dir / "t10k-images-idx3-ubyte"),
            label=str(fashion_dir / "t10k-labels-idx1-ubyte"),
            batch_size=100,
            silent=True,
        )
        assert isinstance(local, mx.io.MXDataIter), "local paths stay with MXNet's own iterator"
    finally:
        mxnet_s3.disable()
    assert not mxnet_s3.enabled()
    assert not hasattr(mx.io.MNISTIter, "__prefetchd_original__")


def test_a_gluon_loop_trains_on_the_drop_in(daemon: DaemonProcess, fashion_urls: dict[str, str]) -> None:
    from mxnet import autograd, gluon

    train = MNISTIter(
        image=fashion_urls["train-images-idx3-ubyte"],
        label=fashion_urls["train-labels-idx1-ubyte"],
        batch_size=100,
        shuffle=True,
        silent=True,
        socket_path=str(daemon.socket_path),
    )
    mx.random.seed(1)
    net = gluon.nn.Sequential()
    net.add(gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    accuracy = mx.metric.Accuracy()
    for i, batch in enumerate(train):
        data, label = batch.data[0], batch.label[0]
        with autograd.record():
            output = net(data)
            loss = loss_fn(output, label)
        loss.backward()
        trainer.step(data.shape[0])
        if i >= 300:
            accuracy.update([label], [output])
    assert i == 599
    assert accuracy.get()[1] > 0.7
