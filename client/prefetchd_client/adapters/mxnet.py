"""Drop-in replacements for MXNet's iterators that read through prefetchd and accept s3:// URLs.

MXNet's argument names are kept and translated once, here. Importing this module imports MXNet.

Where MXNet's own iterator and the obvious choice differ, MXNet's behaviour is kept:
- MNISTIter scales pixels by 1/256 (not 1/255) and drops a final partial batch (pad is always 0);
- with `shuffle=True` it shuffles once, at construction, and every epoch repeats that order (code such as
  MXNet's test_conv.py relies on this: it predicts one pass and reads labels from the next). Pass
  `reshuffle_every_epoch=True` for a new permutation each epoch. The permutation itself is prefetchd's
  (seeded by `seed`), not the one MXNet's std::mt19937 gives: same samples, different order.
- unknown keyword arguments are accepted and ignored, as MXNet's parameter parser does.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import mxnet as mx
import numpy as np
from numpy.typing import NDArray

from .. import files
from ..iterator import DEFAULT_TIMEOUT_S, Batch, BatchIterator, idx_iter, recordio_iter

log = logging.getLogger("prefetchd_client")


def log_like_mxnet(message: str) -> None:
    """MXNet prints its iterator's load line to stderr whatever logging says; do the same."""
    if logging.getLogger().hasHandlers() or log.hasHandlers():
        log.info(message)
    else:
        print(f"[{time.strftime('%H:%M:%S')}] prefetchd: {message}", file=sys.stderr)


class HostBuffers:
    """Host memory that batches are copied into, each wrapped as an NDArray without a copy (DLPack).

    Why not `NDArray._sync_copyfrom` (what `mx.nd.array` does): it first waits until MXNet's engine could
    write the array, and that wait sits in the engine's queue behind the backward pass just pushed. On the
    conv net `next()` took 1.1 ms median against MXNet's own iterator's 0.29 ms; this alone took the epoch
    from 1.15x to 1.08x local (docs/benchmarks.md). An NDArray made from host memory through DLPack waits
    for nothing.

    A buffer is written again only once MXNet has let go of it: its DLPack deleter drops the reference it
    took when the last NDArray and engine operation using it are gone. So a batch a trainer keeps is never
    overwritten (MXNet's own iterators overwrite it after `prefetch_buffer` batches).
    """

    KEPT = 8  # buffers per shape kept for reuse; more held at once by the trainer are allocated and let go

    def __init__(self) -> None:
        self._buffers: dict[tuple[tuple[int, ...], np.dtype[Any]], list[_HostBuffer]] = {}

    def __len__(self) -> int:
        """Buffers kept for reuse."""
        return sum(len(buffers) for buffers in self._buffers.values())

    def ndarray(self, view: NDArray[Any]) -> mx.nd.NDArray:
        """A copy of `view` (shared memory, valid until the next batch) as an NDArray the trainer may keep."""
        if view.dtype not in _DLPACK_TYPES:
            return mx.nd.array(view, dtype=view.dtype)
        buffer = self._idle(view.shape, view.dtype)
        np.copyto(buffer.array, view)
        return buffer.wrap()

    def _idle(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> _HostBuffer:
        buffers = self._buffers.setdefault((shape, dtype), [])
        for i in range(len(buffers)):
            if sys.getrefcount(buffers[i].array) == _ONLY_OURS:
                return buffers[i]
        buffer = _HostBuffer(np.empty(shape, dtype))
        if len(buffers) < self.KEPT:
            buffers.append(buffer)
        return buffer


# numpy dtype -> MXNet's DLPack type triple; a dict lookup, where `str(dtype)` (what `mx.nd.from_numpy` keys
# on, twice a call) runs numpy's Python-level naming code
_DLPACK_TYPES = {np.dtype(name): triple for name, triple in mx.nd.ndarray.DLDataType.TYPE_MAP.items()}


class _HostBuffer:
    """One host array and the DLPack description of it, made once and handed to MXNet at each wrap.

    `mx.nd.from_numpy` builds that description anew each call (ctypes structures, two `str(dtype)`): 33 µs
    of the 60 a batch array took, twice a batch. MXNet copies the description when it takes a transient
    handle (`NDArray::FromDLPack`) and keeps only the shape and data pointer, so one serves every wrap.
    """

    __slots__ = ("_object", "_shape", "_tensor", "array")

    def __init__(self, array: NDArray[Any]) -> None:
        self.array = array
        self._object = ctypes.py_object(array)  # what the deleter lets go of: one reference per wrap
        self._shape = (ctypes.c_int64 * array.ndim)(*array.shape)
        dl = mx.nd.ndarray
        tensor = dl.DLManagedTensor()
        tensor.dl_tensor.data = array.ctypes.data
        tensor.dl_tensor.ctx = dl.DLContext(1, 0)  # cpu(0)
        tensor.dl_tensor.ndim = array.ndim
        tensor.dl_tensor.dtype = _DLPACK_TYPES[array.dtype]
        tensor.dl_tensor.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        tensor.dl_tensor.strides = None  # C-contiguous
        tensor.dl_tensor.byte_offset = 0
        tensor.manager_ctx = ctypes.c_void_p.from_buffer(self._object)
        tensor.deleter = dl.dl_managed_tensor_deleter  # MXNet's own: drops the reference taken below
        self._tensor = tensor

    def wrap(self) -> mx.nd.NDArray:
        """An NDArray over `array`, holding a reference to it until MXNet frees the NDArray's memory."""
        ctypes.pythonapi.Py_IncRef(self._object)
        handle = mx.base.NDArrayHandle()
        try:
            mx.base.check_call(
                mx.base._LIB.MXNDArrayFromDLPackEx(ctypes.byref(self._tensor), True, ctypes.byref(handle))
            )
        except BaseException:
            ctypes.pythonapi.Py_DecRef(self._object)
            raise
        return mx.nd.NDArray(handle=handle)


def _refcount_held_by_a_buffer_alone() -> int:
    """`sys.getrefcount(buffers[i].array)` of an array only its `_HostBuffer` holds, measured the way `_idle`
    reads it.

    Measured, not written down as 2: what the call itself adds is the interpreter's business (newer CPythons
    borrow such references), and a count one too low would hand out a buffer MXNet still reads.
    """
    buffers = [_HostBuffer(np.empty(1, np.float32))]
    i = 0
    return sys.getrefcount(buffers[i].array)


_ONLY_OURS = _refcount_held_by_a_buffer_alone()


class StreamDataIter(mx.io.DataIter):  # type: ignore[misc]
    """An `mx.io.DataIter` over one prefetchd stream: NDArray batches copied out of the ring."""

    def __init__(self, stream: BatchIterator, *, data_name: str, label_name: str) -> None:
        super().__init__(stream.batch_size)
        self._stream = stream
        self._current: Batch | None = None
        self._copies: dict[str, mx.nd.NDArray] = {}  # the current batch's NDArrays, made on first ask
        self._buffers = HostBuffers()
        self.provide_data = [mx.io.DataDesc(data_name, stream.data_shape, stream.data_dtype.type)]
        self.provide_label = [mx.io.DataDesc(label_name, stream.label_shape, stream.label_dtype.type)]

    @property
    def stream(self) -> BatchIterator:
        return self._stream

    def reset(self) -> None:
        self._current = None
        self._stream.reset()

    def state_dict(self) -> dict[str, Any]:
        """The stream's position and identity (see `BatchIterator.state_dict`): the current batch counts as read."""
        return self._stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state_dict()` was taken: the next batch is the one an uninterrupted run reads next."""
        self._current = None
        self._copies = {}
        self._stream.load_state_dict(state)

    def iter_next(self) -> bool:
        self._copies = {}
        try:
            self._current = next(self._stream)
        except StopIteration:
            self._current = None
            return False
        return True

    def next(self) -> mx.io.DataBatch:
        if not self.iter_next():
            raise StopIteration
        return mx.io.DataBatch(
            data=self.getdata(),
            label=self.getlabel(),
            pad=self.getpad(),
            index=self.getindex(),
            provide_data=self.provide_data,
            provide_label=self.provide_label,
        )

    def _batch(self) -> Batch:
        if self._current is None:
            raise RuntimeError("no current batch: call iter_next() first")
        return self._current

    def _ndarray(self, name: str, view: NDArray[Any]) -> mx.nd.NDArray:
        """The current batch's `name` array as an NDArray, copied out of the ring once."""
        copied = self._copies.get(name)
        if copied is None:
            copied = self._copies[name] = self._buffers.ndarray(view)
        return copied

    def getdata(self) -> list[mx.nd.NDArray]:
        return [self._ndarray("data", self._batch().data)]

    def getlabel(self) -> list[mx.nd.NDArray]:
        return [self._ndarray("label", self._batch().label)]

    def getpad(self) -> int:
        return self._batch().pad

    def getindex(self) -> NDArray[np.uint64]:
        return self._batch().index.copy()

    def close(self) -> None:
        """Hand the stream back to the daemon now; otherwise it goes when the iterator is collected."""
        self._current = None
        self._stream.close()

    def __enter__(self) -> StreamDataIter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()


class MNISTIter(StreamDataIter):
    """`mx.io.MNISTIter` with the same arguments and batches, reading `s3://` (or local) IDX files."""

    def __init__(
        self,
        image: str = "./train-images-idx3-ubyte",
        label: str = "./train-labels-idx1-ubyte",
        batch_size: int = 128,
        shuffle: bool = True,
        flat: bool = False,
        seed: int = 0,
        silent: bool = False,
        num_parts: int = 1,
        part_index: int = 0,
        prefetch_buffer: int = 4,
        dtype: str | None = None,
        data_name: str = "data",
        label_name: str = "softmax_label",
        data_shape: tuple[int, ...] | None = None,
        *,
        reshuffle_every_epoch: bool = False,
        socket_path: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **ignored: Any,
    ) -> None:
        if ignored:
            log.debug("MNISTIter: ignoring arguments MXNet would ignore too: %s", sorted(ignored))
        stream = idx_iter(
            image,
            label,
            batch_size=int(batch_size),
            shuffle=bool(shuffle),
            seed=int(seed),
            reshuffle=reshuffle_every_epoch,
            flat=bool(flat),
            num_parts=int(num_parts),
            part_index=int(part_index),
            last_batch="discard",
            dtype=dtype or "float32",
            prefetch=int(prefetch_buffer),
            socket_path=socket_path,
            timeout_s=timeout_s,
        )
        super().__init__(stream, data_name=data_name, label_name=label_name)
        if data_shape is not None and math.prod(data_shape) != math.prod(stream.data_shape[1:]):
            log.warning(
                "MNISTIter: data_shape=%s does not match the images' %s; MXNet ignores data_shape, so does this",
                tuple(data_shape),
                stream.data_shape[1:],
            )
        if not silent:
            shape = stream.data_shape
            shown = f"({shape[0]},{shape[1]})" if flat else "[" + ",".join(map(str, shape)) + "]"
            log_like_mxnet(
                f"MNISTIter: load {stream.samples_per_epoch} images, shuffle={int(bool(shuffle))}, shape={shown}"
            )


# ImageRecordIter arguments that change pixels and that this drop-in does not implement: refused when set,
# never silently ignored (a model trained without the augmentation it asked for fails quietly).
_UNSUPPORTED_AUGMENTATION = {
    "max_rotate_angle": 0,
    "max_aspect_ratio": 0.0,
    "max_shear_ratio": 0.0,
    "max_crop_size": -1,
    "min_crop_size": -1,
    "max_random_scale": 1.0,
    "min_random_scale": 1.0,
    "max_img_size": 1e10,
    "min_img_size": 0.0,
    "random_h": 0,
    "random_s": 0,
    "random_l": 0,
    "rotate": -1,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "pca_noise": 0.0,
    "random_resized_crop": False,
    "max_random_area": 1.0,
    "min_random_area": 1.0,
    "mean_img": "",
    "path_imglist": "",
    "mean_a": 0.0,
    "std_a": 1.0,
}


class ImageRecordIter(StreamDataIter):
    """`mx.io.ImageRecordIter` with the same arguments and batches, reading `s3://` (or local) RecordIO."""

    def __init__(
        self,
        path_imgrec: str = "",
        data_shape: tuple[int, int, int] | None = None,
        batch_size: int = 1,
        path_imgidx: str = "",
        label_width: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_chunk_size: int = 64,
        resize: int = -1,
        rand_crop: bool = False,
        rand_mirror: bool = False,
        mean_r: float = 0.0,
        mean_g: float = 0.0,
        mean_b: float = 0.0,
        std_r: float = 1.0,
        std_g: float = 1.0,
        std_b: float = 1.0,
        scale: float = 1.0,
        round_batch: bool = True,
        num_parts: int = 1,
        part_index: int = 0,
        preprocess_threads: int = 4,
        prefetch_buffer: int = 4,
        dtype: str | None = None,
        data_name: str = "data",
        label_name: str = "softmax_label",
        inter_method: int = 1,
        pad: int = 0,
        fill_value: int = 255,
        mirror: bool = False,
        verbose: bool = True,
        *,
        skip_bad: bool = False,
        socket_path: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        **others: Any,
    ) -> None:
        if not path_imgrec:
            raise ValueError("ImageRecordIter needs path_imgrec")
        if data_shape is None or len(tuple(data_shape)) != 3:
            raise ValueError(f"ImageRecordIter needs data_shape=(channels, height, width), not {data_shape!r}")
        refused = sorted(k for k, default in _UNSUPPORTED_AUGMENTATION.items() if k in others and others[k] != default)
        if refused:
            raise ValueError(
                f"ImageRecordIter through prefetchd does not implement {refused}; "
                "read the local file with mx.io.ImageRecordIter, or augment in the training loop"
            )
        ignored = sorted(set(others) - set(_UNSUPPORTED_AUGMENTATION))
        if ignored:
            log.debug("ImageRecordIter: ignoring arguments MXNet would ignore too: %s", ignored)
        log.debug(
            "ImageRecordIter: shuffle_chunk_size=%s has no effect: records are fetched by range", shuffle_chunk_size
        )
        stream = recordio_iter(
            path_imgrec,
            path_imgidx or None,
            batch_size=int(batch_size),
            data_shape=tuple(int(v) for v in data_shape),  # type: ignore[arg-type]
            label_width=int(label_width),
            shuffle=bool(shuffle),
            seed=int(seed),
            resize=int(resize),
            rand_crop=bool(rand_crop),
            rand_mirror=bool(rand_mirror),
            mean=(float(mean_r), float(mean_g), float(mean_b)),
            std=(float(std_r), float(std_g), float(std_b)),
            scale=float(scale),
            dtype=dtype or "float32",
            pad=int(pad),
            fill_value=int(fill_value),
            mirror=bool(mirror),
            inter_method=int(inter_method),
            num_parts=int(num_parts),
            part_index=int(part_index),
            last_batch="round" if round_batch else "pad",
            preprocess_threads=int(preprocess_threads),
            skip_bad=skip_bad,
            prefetch=int(prefetch_buffer),
            socket_path=socket_path,
            timeout_s=timeout_s,
        )
        super().__init__(stream, data_name=data_name, label_name=label_name)
        if verbose:
            log_like_mxnet(f"ImageRecordIOParser2: {path_imgrec}, use {preprocess_threads} threads for decoding..")


def save_checkpoint(
    module_or_block: Any,
    prefix_url: str,
    epoch: int,
    *,
    save_optimizer_states: bool = False,
    socket_path: str | os.PathLike[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """Write MXNet's checkpoint files, `prefix-symbol.json` and `prefix-%04d.params`, to s3:// through the daemon.

    A Module is saved as `Module.save_checkpoint` saves it, a Gluon HybridBlock as `HybridBlock.export` does
    (hybridized and run once; the same two files, parameters keyed `arg:`/`aux:`), so `load_checkpoint` and
    MXNet's own `mx.model.load_checkpoint` read either. MXNet writes them to a private temporary directory
    first; each is then one upload that appears whole or not at all. Returns the URLs written.
    """
    suffixes = ["-symbol.json", f"-{epoch:04d}.params"]
    with tempfile.TemporaryDirectory(prefix="prefetchd-checkpoint-") as directory:
        local = os.path.join(directory, "checkpoint")
        if isinstance(module_or_block, mx.gluon.HybridBlock):
            module_or_block.export(local, epoch)
        elif isinstance(module_or_block, mx.mod.BaseModule):
            module_or_block.save_checkpoint(local, epoch, save_optimizer_states=save_optimizer_states)
            if save_optimizer_states:
                suffixes.append(f"-{epoch:04d}.states")
        else:
            raise TypeError(f"save_checkpoint takes an mx.mod.Module or a Gluon HybridBlock, not {module_or_block!r}")
        for suffix in suffixes:
            path = local + suffix
            with (
                open(path, "rb") as source,
                files.open(
                    prefix_url + suffix,
                    "wb",
                    size_hint=os.path.getsize(path),
                    socket_path=socket_path,
                    timeout_s=timeout_s,
                ) as target,
            ):
                shutil.copyfileobj(source, target, files.READ_BATCH_BYTES)
    return [prefix_url + suffix for suffix in suffixes]


def load_checkpoint(
    prefix_url: str,
    epoch: int,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """`(symbol, arg_params, aux_params)` of a checkpoint in s3://, as `mx.model.load_checkpoint` returns them.

    Give them to `Module.set_params` (or `Module.fit(arg_params=..., aux_params=...)`) to resume training, or
    the files' URLs to `mx.gluon.SymbolBlock.imports` after downloading.
    """

    def read(suffix: str) -> bytes:
        with files.open(prefix_url + suffix, "rb", socket_path=socket_path, timeout_s=timeout_s) as source:
            return source.readall()

    symbol = mx.sym.load_json(read("-symbol.json").decode("utf-8"))
    saved = mx.nd.load_frombuffer(read(f"-{epoch:04d}.params"))
    arg_params = {name[4:]: value for name, value in saved.items() if name.startswith("arg:")}
    aux_params = {name[4:]: value for name, value in saved.items() if name.startswith("aux:")}
    return symbol, arg_params, aux_params
