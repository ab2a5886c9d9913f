"""Decoded images/s of 224×224 JPEG RecordIO: prefetchd vs `mx.io.ImageRecordIter`, side by side in one run.

Readers, each draining whole epochs with the trainer doing nothing, interleaved round by round so that
machine noise hits them alike, for 1 and 2 decode threads/workers:
- `mx.io.ImageRecordIter` on the local file (the reference a user would compare with);
- prefetchd from the local file: the pipeline's own ceiling;
- prefetchd from S3 (nginx behind the shaping relay, as for the bytes: first byte after 30 ms, 90 MB/s per
  connection), with the epoch cache off so that every epoch crosses that network.
Also measured in every round: our decoder alone (`decode_image` over records in memory, no pipeline) in one
process and in two at once. The two at once, "what the same decode code does on 2 cores from local memory",
is the bound the pipeline is held to; twice the one-process figure is shown beside it, since two processes
on this machine's 2 vCPUs do not quite double one.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..testing.datasets import cache_root
from ..testing.image_records import RecFiles, images, write_rec
from .network import bench_s3, daemon

SHAPE = (3, 224, 224)
_MEAN_RECORD_BYTES = 29_000  # what synthetic_image gives at q95, measured
_DECODER_PASSES = 8  # ~2.5 s of decoding per measurement: at 3 passes (~1 s) the bound moved ±7% run to run


@dataclass(frozen=True)
class Result:
    reader: str
    threads: int
    images: int
    seconds: list[float]

    @property
    def images_per_s(self) -> float:
        return self.images / statistics.median(self.seconds)


def dataset(megabytes: int) -> RecFiles:
    """~`megabytes` of 224×224 q95 JPEG records, written once by MXNet's tools and cached."""
    cache = cache_root() / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    rec = cache / f"jpeg224-{megabytes}MB.rec"
    # whole batches of 100: MXNet 1.9.1 with round_batch=False reports pad 0 on a partial last batch
    count = max(100, megabytes * 1_000_000 // _MEAN_RECORD_BYTES // 100 * 100)
    if rec.exists() and rec.with_suffix(".idx").exists():
        return RecFiles(rec, rec.with_suffix(".idx"), len(rec.with_suffix(".idx").read_text().splitlines()))
    partial = rec.with_suffix(".partial.rec")
    files = write_rec(
        partial, images(count, np.random.default_rng(0), [(224, 224)]), [float(i % 1000) for i in range(count)]
    )
    files.idx.rename(rec.with_suffix(".idx"))
    partial.rename(rec)
    return RecFiles(rec, rec.with_suffix(".idx"), files.count)


def encoded_sample(files: RecFiles, sample: int = 600) -> list[bytes]:
    """The first `sample` records' encoded images, in memory."""
    from ..formats import recordio

    offsets = recordio.parse_index(files.idx.read_bytes(), url=str(files.idx))[:sample]
    with open(files.rec, "rb") as handle:
        data = handle.read(int(offsets[-1]) + (1 << 20))
    encoded = []
    for offset in offsets.tolist():
        payload, _ = recordio.read_record(data, offset, url=str(files.rec))
        encoded.append(bytes(recordio.unpack_image(payload, url=str(files.rec), offset=offset)[1]))
    return encoded


def _decode_for_a_while(encoded: list[bytes], start: Any, results: Any) -> None:
    """One decoder process: wait for the others, decode every image a few times over, report the seconds it took."""
    import cv2

    from ..decode.image import ImageOptions, decode_image

    cv2.setNumThreads(1)
    options = ImageOptions(data_shape=SHAPE)
    out = np.empty(SHAPE, dtype=np.float32)
    decode_image(encoded[0], options, out, None, url="", offset=0)  # warm: OpenCV's first call sets up
    start.wait()
    started = time.perf_counter()
    for _ in range(_DECODER_PASSES):
        for image in encoded:
            decode_image(image, options, out, None, url="", offset=0)
    results.put(time.perf_counter() - started)


def decoder_images_per_s(encoded: list[bytes], processes: int) -> float:
    """Our decoder alone in `processes` processes at once (fresh ones, as the daemon's workers are): images/s."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    workers = [context.Process(target=_decode_for_a_while, args=(encoded, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    start.wait()
    slowest: float = max(results.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join()
    return processes * _DECODER_PASSES * len(encoded) / slowest


def _mxnet(files: RecFiles, threads: int, batch_size: int) -> Callable[[], int]:
    import mxnet as mx

    it = mx.io.ImageRecordIter(
        path_imgrec=str(files.rec),
        path_imgidx=str(files.idx),
        data_shape=SHAPE,
        batch_size=batch_size,
        preprocess_threads=threads,
        round_batch=False,
    )

    def epoch() -> int:
        it.reset()
        return sum(batch.data[0].shape[0] - batch.pad for batch in it)

    return epoch


def _prefetchd(rec: str, idx: str, socket: Path, threads: int, batch_size: int) -> Callable[[], int]:
    from prefetchd_client import recordio_iter

    it = recordio_iter(
        rec,
        idx,
        batch_size=batch_size,
        data_shape=SHAPE,
        preprocess_threads=threads,
        last_batch="pad",
        socket_path=socket,
    )

    def epoch() -> int:
        return sum(batch.data.shape[0] - batch.pad for batch in it)

    return epoch


def run(
    rounds: int = 3, megabytes: int = 1000, batch_size: int = 100, say: Callable[[str], None] = print
) -> list[Result]:
    say(f"dataset: ~{megabytes} MB of 224x224 q95 JPEG records (generated once, then cached)")
    files = dataset(megabytes)
    say(f"  {files.count} records, {files.rec.stat().st_size / 1e6:,.0f} MB at {files.rec}")
    encoded = encoded_sample(files)
    decoder: dict[int, list[float]] = {1: [], 2: []}
    cores = len(os.sched_getaffinity(0))
    with bench_s3([files.rec, files.idx]) as s3, s3.network(30, 90) as network:
        rec_url, idx_url = s3.urls[files.rec], s3.urls[files.idx]
        # the epoch cache off, so that every timed epoch of the S3 rows crosses the modelled network
        with daemon(network.endpoint_url, "--cache-size", "0") as serve:
            readers: dict[tuple[str, int], Callable[[], int]] = {}
            for threads in (1, 2):
                readers["mx.io.ImageRecordIter, local file", threads] = _mxnet(files, threads, batch_size)
                readers["prefetchd, local file", threads] = _prefetchd(
                    str(files.rec), str(files.idx), serve.socket_path, threads, batch_size
                )
                readers["prefetchd, s3:// over 30 ms, 90 MB/s", threads] = _prefetchd(
                    rec_url, idx_url, serve.socket_path, threads, batch_size
                )
            times: dict[tuple[str, int], list[float]] = {key: [] for key in readers}
            for round_number in range(rounds + 1):
                for key, epoch in readers.items():
                    started = time.perf_counter()
                    count = epoch()
                    if round_number:  # round 0 warms up: worker start, page cache
                        times[key].append(time.perf_counter() - started)
                    assert count == files.count, f"{key} gave {count} images of {files.count}"
                if round_number:
                    for processes in decoder:
                        decoder[processes].append(decoder_images_per_s(encoded, processes))
                say(f"round {round_number}/{rounds} done" + (" (warm-up, not timed)" if not round_number else ""))
    results = [Result(name, threads, files.count, seconds) for (name, threads), seconds in times.items()]
    report(results, statistics.median(decoder[1]), statistics.median(decoder[2]), cores, say)
    return results


def report(results: list[Result], one: float, two: float, cores: int, say: Callable[[str], None]) -> None:
    bound = two
    say(
        f"\n{results[0].images} decoded 224x224 images per epoch, batch 100, median of {len(results[0].seconds)} rounds"
    )
    say(
        f"our decoder alone, records in memory: {one:,.0f} images/s in one process, {two:,.0f} in two at once "
        f"({two / one:.2f}x; {cores} cores): the bound is {bound:,.0f} (twice one process would be {2 * one:,.0f})"
    )
    say(f"{'reader':40} {'threads':>7} {'images/s':>10} {'vs MXNet':>9} {'vs bound':>9} {'vs 2x one':>10}")
    reference = {r.threads: r for r in results if r.reader.startswith("mx.io")}
    for result in results:
        ratio = result.images_per_s / reference[result.threads].images_per_s
        say(
            f"{result.reader:40} {result.threads:7} {result.images_per_s:10,.0f} {ratio:8.2f}x "
            f"{result.images_per_s / bound:8.2f}x {result.images_per_s / (2 * one):9.2f}x"
        )
    for name in sorted({r.reader for r in results}):
        by_threads = {r.threads: r.images_per_s for r in results if r.reader == name}
        say(f"scaling 1 → 2 threads/workers, {name}: {by_threads[2] / by_threads[1]:.2f}x")
