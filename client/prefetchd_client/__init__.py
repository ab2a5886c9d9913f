"""prefetchd-client: decoded batches from a prefetchd daemon, as numpy views of shared memory.

    from prefetchd_client import idx_iter
    for data, label in idx_iter("s3://bucket/train-images-idx3-ubyte", "s3://bucket/train-labels-idx1-ubyte",
                                batch_size=100, shuffle=True):
        ...

MXNet users take `prefetchd_client.MNISTIter` (a drop-in for `mx.io.MNISTIter` that accepts s3:// URLs),
or `import prefetchd_client.mxnet_s3` to route MXNet's own iterators' s3:// paths through prefetchd.
`prefetchd_client.open("s3://…", "wb")` writes an object through the daemon (and "rb" reads one);
`save_checkpoint`/`load_checkpoint` put MXNet checkpoints there.
PyTorch users take `prefetchd_client.idx_dataset` / `recordio_dataset`, a `torch.utils.data.IterableDataset`
for `DataLoader(dataset, batch_size=None)` whose tensors share the ring's memory.
Only numpy and the standard library are imported here; MXNet or torch is imported when its adapter is first used.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .autostart import connect
from .errors import (
    AccessDenied,
    BatchTimeout,
    CorruptRecord,
    DaemonUnavailable,
    FormatError,
    IncompatibleState,
    InvalidRequest,
    LimitExceeded,
    LocalProtocolError,
    ObjectChanged,
    ObjectNotFound,
    PrefetchdError,
    ProtocolError,
    RemoteProtocolError,
    SourceError,
    SourceUnavailable,
    StreamClosed,
    UndecodableImage,
)
from .files import ObjectReader, ObjectWriter, open
from .iterator import Batch, BatchIterator, bytes_iter, idx_iter, recordio_iter
from .partition import partition_from_env

_MXNET_ADAPTERS = ("ImageRecordIter", "MNISTIter", "load_checkpoint", "save_checkpoint")
_TORCH_ADAPTERS = ("StreamDataset", "idx_dataset", "recordio_dataset")

__all__ = [
    "AccessDenied",
    "Batch",
    "BatchIterator",
    "BatchTimeout",
    "CorruptRecord",
    "DaemonUnavailable",
    "FormatError",
    "ImageRecordIter",
    "IncompatibleState",
    "InvalidRequest",
    "LimitExceeded",
    "LocalProtocolError",
    "MNISTIter",
    "ObjectChanged",
    "ObjectNotFound",
    "ObjectReader",
    "ObjectWriter",
    "PrefetchdError",
    "ProtocolError",
    "RemoteProtocolError",
    "SourceError",
    "SourceUnavailable",
    "StreamClosed",
    "StreamDataset",
    "UndecodableImage",
    "__version__",
    "bytes_iter",
    "connect",
    "idx_dataset",
    "idx_iter",
    "load_checkpoint",
    "open",
    "partition_from_env",
    "recordio_dataset",
    "recordio_iter",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    """The MXNet and PyTorch adapters, imported (with MXNet or torch) only when asked for."""
    if name in _MXNET_ADAPTERS:
        from .adapters import mxnet

        return getattr(mxnet, name)
    if name in _TORCH_ADAPTERS:
        from .adapters import torch

        return getattr(torch, name)
    raise AttributeError(f"module 'prefetchd_client' has no attribute {name!r}")
