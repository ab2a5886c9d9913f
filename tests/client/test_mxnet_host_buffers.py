"""The MXNet adapter's host buffers: an NDArray over each without a copy, reused only once MXNet lets go."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from prefetchd_client.adapters.mxnet import HostBuffers

pytestmark = pytest.mark.mxnet


def _batch(value: float) -> np.ndarray:
    return np.full((4, 1, 28, 28), value, dtype=np.float32)


def test_a_buffer_is_reused_once_its_ndarray_is_gone_and_not_before() -> None:
    buffers = HostBuffers()
    first, second = buffers.ndarray(_batch(1)), buffers.ndarray(_batch(2))
    assert len(buffers) == 2
    assert (first.asnumpy() == 1).all() and (second.asnumpy() == 2).all()
    del first
    mx.nd.waitall()
    third = buffers.ndarray(_batch(3))
    assert len(buffers) == 2  # the first one's memory, again
    assert (second.asnumpy() == 2).all() and (third.asnumpy() == 3).all()


def test_a_buffer_an_engine_operation_still_reads_is_not_written() -> None:
    buffers = HostBuffers()
    slow = mx.nd.ones((2500, 2500))
    slow = mx.nd.dot(slow, slow)  # the engine is busy for a while: what is pushed next waits for it
    batch = buffers.ndarray(_batch(1))
    result = slow[0, 0] * 0 + batch  # reads `batch` once `slow` is done
    del batch  # the trainer lets go; the operation pushed above has not run yet
    buffers.ndarray(_batch(5))
    assert (result.asnumpy() == 1).all()


def test_buffers_are_kept_per_shape_and_beyond_the_kept_few_let_go() -> None:
    buffers = HostBuffers()
    held = [buffers.ndarray(_batch(n)) for n in range(HostBuffers.KEPT + 3)]
    short = buffers.ndarray(np.zeros((2, 1, 28, 28), dtype=np.float32))  # "keep" mode's short last batch
    assert len(buffers) == HostBuffers.KEPT + 1
    assert [int(array.asnumpy()[0, 0, 0, 0]) for array in held] == list(range(HostBuffers.KEPT + 3))
    assert short.shape == (2, 1, 28, 28)


@pytest.mark.parametrize("dtype", ["uint8", "float16", "int8"])  # int8 has no DLPack type in MXNet: a plain copy
def test_every_dtype_comes_out_as_it_went_in(dtype: str) -> None:
    view = np.arange(24).reshape(2, 3, 4).astype(dtype)
    array = HostBuffers().ndarray(view)
    assert array.dtype == np.dtype(dtype)
    assert np.array_equal(array.asnumpy(), view)
