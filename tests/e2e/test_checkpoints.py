"""Writing to s3:// through the daemon: files and MXNet checkpoints that appear whole or not at all."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import prefetchd_client
from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd_client import AccessDenied, DaemonUnavailable, SourceError
from tests.conftest import BUCKET, Objects

PART_BYTES = 8 << 20  # the daemon's part size (prefetchd/serve/upload.py)
BIG = np.random.default_rng(11).integers(0, 256, 2 * PART_BYTES + 123_457, dtype=np.uint8).tobytes()  # 3 parts


def config_file(tmp_path: Path, text: str) -> tuple[str, ...]:
    path = tmp_path / "prefetchd.toml"
    path.write_text(text)
    return ("--config", str(path))


def url_for(objects: Objects, name: str) -> str:
    return f"s3://{BUCKET}/{objects.prefix}/{name}"


def key_of(url: str) -> str:
    return url.split("/", 3)[3]


def object_exists(s3_server: EmbeddedS3, url: str) -> bool:
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=key_of(url))
    return any(item["Key"] == key_of(url) for item in listed.get("Contents", []))


def pending_uploads(s3_server: EmbeddedS3, url: str) -> list[str]:
    """The incomplete multipart uploads at the key: what a killed writer can leave behind."""
    listed = s3_server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=key_of(url))
    return [upload["UploadId"] for upload in listed.get("Uploads", []) if upload["Key"] == key_of(url)]


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """S3's state as another process leaves it: asked again until true (there is no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("size", [0, 100_003, len(BIG)], ids=["empty", "one-put", "three-parts"])
def test_bytes_written_read_back_identical(
    size: int, objects: Objects, s3_server: EmbeddedS3, daemon: DaemonProcess
) -> None:
    data, url = BIG[:size], url_for(objects, f"blob-{size}")
    with prefetchd_client.open(url, "wb", socket_path=daemon.socket_path) as out:
        for at in range(0, size, 1_000_003):  # writes that straddle the parts
            assert out.write(data[at : at + 1_000_003]) == len(data[at : at + 1_000_003])
    assert out.result is not None and out.result.size == size
    stored = s3_server.client().get_object(Bucket=BUCKET, Key=key_of(url))
    assert stored["Body"].read() == data
    assert stored["ETag"].endswith('-3"') == (size == len(BIG))  # the big one went up as a multipart upload
    with prefetchd_client.open(url, "rb", socket_path=daemon.socket_path) as source:
        assert source.size == size
        assert source.read(10) == data[:10]
        assert source.read() == data[10:]
        assert source.read() == b""  # and the end stays the end


def test_an_error_inside_the_with_block_leaves_no_object(
    objects: Objects, s3_server: EmbeddedS3, daemon: DaemonProcess
) -> None:
    url = url_for(objects, "half-written")

    def write_then_fail() -> None:
        with prefetchd_client.open(url, "wb", socket_path=daemon.socket_path) as out:
            out.write(BIG)
            wait_until(lambda: bool(pending_uploads(s3_server, url)), "the daemon started the multipart upload")
            raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="training diverged"):
        write_then_fail()
    wait_until(lambda: not pending_uploads(s3_server, url), "the daemon aborted the multipart upload")
    assert not object_exists(s3_server, url)


WRITER = textwrap.dedent(
    """
    import sys, time
    import prefetchd_client
    out = prefetchd_client.open(sys.argv[1], "wb", socket_path=sys.argv[2])
    out.write(bytes(int(sys.argv[3])))
    print("written", flush=True)
    time.sleep(600)
    """
)


def test_a_client_killed_mid_upload_leaves_no_object(
    objects: Objects, s3_server: EmbeddedS3, daemon: DaemonProcess
) -> None:
    url = url_for(objects, "killed-client")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(daemon.socket_path), str(2 * PART_BYTES + 10)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
        wait_until(lambda: bool(pending_uploads(s3_server, url)), "the daemon started the multipart upload")
    finally:
        writer.kill()
        writer.wait()
    wait_until(lambda: not pending_uploads(s3_server, url), "the daemon aborted the multipart upload")
    assert not object_exists(s3_server, url)


def test_a_daemon_stopped_mid_upload_aborts_it(objects: Objects, s3_server: EmbeddedS3) -> None:
    url = url_for(objects, "daemon-stopped")
    with DaemonProcess(env=s3_server.environment()) as daemon:
        out = prefetchd_client.open(url, "wb", socket_path=daemon.socket_path)
        out.write(BIG[: 2 * PART_BYTES + 10])
        wait_until(lambda: bool(pending_uploads(s3_server, url)), "the daemon started the multipart upload")
        assert daemon.stop(signal.SIGTERM) == 0
        with pytest.raises(DaemonUnavailable, match="shutting down"):
            out.close()
    assert not pending_uploads(s3_server, url) and not object_exists(s3_server, url)


def test_a_daemon_killed_mid_upload_leaves_no_object_only_an_orphan_upload(
    objects: Objects, s3_server: EmbeddedS3
) -> None:
    """SIGKILL leaves nobody to abort: the parts stay (billed) until a lifecycle rule or `abort` removes them."""
    url = url_for(objects, "daemon-killed")
    with DaemonProcess(env=s3_server.environment()) as daemon:
        out = prefetchd_client.open(url, "wb", socket_path=daemon.socket_path)
        out.write(BIG[: 2 * PART_BYTES + 10])
        wait_until(lambda: bool(pending_uploads(s3_server, url)), "the daemon started the multipart upload")
        daemon.stop(signal.SIGKILL)
        with pytest.raises(DaemonUnavailable):
            out.close()
    assert not object_exists(s3_server, url)
    orphans = pending_uploads(s3_server, url)
    assert len(orphans) == 1
    s3_server.client().abort_multipart_upload(Bucket=BUCKET, Key=key_of(url), UploadId=orphans[0])


def test_the_allowlist_refuses_a_write_outside_it(objects: Objects, s3_server: EmbeddedS3, tmp_path: Path) -> None:
    allowed = url_for(objects, "allowed/")
    with DaemonProcess(
        env=s3_server.environment(), args=config_file(tmp_path, f'allowed_prefixes = ["{allowed}"]\n')
    ) as daemon:
        with prefetchd_client.open(allowed + "ok", "wb", socket_path=daemon.socket_path) as out:
            out.write(b"inside")
        outside = url_for(objects, "elsewhere/nope")
        with pytest.raises(AccessDenied, match="outside this daemon's allowed_prefixes") as refused:
            prefetchd_client.open(outside, "wb", socket_path=daemon.socket_path)
    assert refused.value.url == outside
    assert not object_exists(s3_server, outside)


def test_a_write_to_a_missing_bucket_is_an_error_naming_the_url(daemon: DaemonProcess) -> None:
    url = "s3://no-such-bucket-here/checkpoints/model-0001.params"
    out = prefetchd_client.open(url, "wb", socket_path=daemon.socket_path)
    out.write(b"weights")
    with pytest.raises(SourceError, match="no-such-bucket-here") as failed:
        out.close()
    assert failed.value.url == url


def test_open_refuses_modes_other_than_rb_and_wb(daemon: DaemonProcess) -> None:
    with pytest.raises(ValueError, match="'ab'"):
        prefetchd_client.open("s3://bucket/key", "ab", socket_path=daemon.socket_path)


# --- MXNet checkpoints ------------------------------------------------------------------------------------------


def train(mx: Any, module: Any, batches: Any, count: int) -> float:
    """`count` SGD steps on the module; returns the last batch's cross-entropy."""
    loss = float("nan")
    for _, batch in zip(range(count), batches, strict=False):
        module.forward_backward(batch)
        module.update()
        probabilities = module.get_outputs()[0].asnumpy()
        labels = batch.label[0].asnumpy().astype(int)
        loss = float(-np.log(probabilities[np.arange(len(labels)), labels] + 1e-12).mean())
    return loss


@pytest.mark.mxnet
def test_a_checkpoint_saved_to_s3_loads_back_bit_identical_and_resumes_training(
    objects: Objects, daemon: DaemonProcess, fashion_dir: Path
) -> None:
    mx = pytest.importorskip("mxnet")
    from prefetchd.testing.mnist_net import conv_net

    mx.random.seed(3)
    batches = mx.io.MNISTIter(
        image=str(fashion_dir / "t10k-images-idx3-ubyte"),
        label=str(fashion_dir / "t10k-labels-idx1-ubyte"),
        batch_size=50,
        shuffle=False,
        silent=True,
    )
    module = mx.mod.Module(conv_net(mx), context=mx.cpu())
    module.bind(batches.provide_data, batches.provide_label)
    module.init_params(mx.init.Xavier())
    module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1})
    train(mx, module, batches, 5)
    prefix = url_for(objects, "mnist")
    written = prefetchd_client.save_checkpoint(module, prefix, 3, socket_path=daemon.socket_path)
    assert written == [prefix + "-symbol.json", prefix + "-0003.params"]

    symbol, arg_params, aux_params = prefetchd_client.load_checkpoint(prefix, 3, socket_path=daemon.socket_path)
    saved_args, saved_aux = module.get_params()
    assert symbol.tojson() == module.symbol.tojson()
    for loaded, saved in ((arg_params, saved_args), (aux_params, saved_aux)):
        assert sorted(loaded) == sorted(saved) and loaded
        for name in saved:
            assert loaded[name].dtype == saved[name].dtype
            assert loaded[name].asnumpy().tobytes() == saved[name].asnumpy().tobytes(), name

    resumed = mx.mod.Module(symbol, context=mx.cpu())
    resumed.bind(batches.provide_data, batches.provide_label)
    resumed.set_params(arg_params, aux_params)
    resumed.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.1})
    assert np.isfinite(train(mx, resumed, batches, 5))


@pytest.mark.mxnet
def test_a_gluon_block_saved_to_s3_loads_back_and_predicts_as_it_did(
    objects: Objects, daemon: DaemonProcess, tmp_path: Path
) -> None:
    mx = pytest.importorskip("mxnet")
    mx.random.seed(4)
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.Dense(16, activation="relu"), mx.gluon.nn.BatchNorm(), mx.gluon.nn.Dense(10))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = mx.nd.array(np.random.default_rng(2).standard_normal((8, 20)))
    with mx.autograd.record():  # one training step, so BatchNorm's running statistics (aux) are not their init
        loss = net(x).sum()
    loss.backward()
    expected = net(x).asnumpy()
    prefix = url_for(objects, "gluon")
    written = prefetchd_client.save_checkpoint(net, prefix, 7, socket_path=daemon.socket_path)
    assert written == [prefix + "-symbol.json", prefix + "-0007.params"]

    symbol, arg_params, aux_params = prefetchd_client.load_checkpoint(prefix, 7, socket_path=daemon.socket_path)
    assert aux_params and arg_params  # BatchNorm's moving mean/var are aux, the weights args
    net.export(str(tmp_path / "local"), 7)  # MXNet's own files for the same block: the reference
    _, local_args, local_aux = mx.model.load_checkpoint(str(tmp_path / "local"), 7)
    for loaded, local in ((arg_params, local_args), (aux_params, local_aux)):
        assert sorted(loaded) == sorted(local)
        for name in local:
            assert loaded[name].asnumpy().tobytes() == local[name].asnumpy().tobytes(), name

    restored = mx.gluon.SymbolBlock(symbol, mx.sym.var("data"))
    restored.collect_params().load_dict({**arg_params, **aux_params}, ignore_extra=False)
    assert np.array_equal(restored(x).asnumpy(), expected)
