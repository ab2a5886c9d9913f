"""One line makes MXNet's own iterator constructors read s3:// paths through prefetchd.

    import prefetchd_client.mxnet_s3      # or: prefetchd_client.mxnet_s3.enable()

After it, `mx.io.MNISTIter(image="s3://bucket/train-images-idx3-ubyte", ...)` works on pip-installed MXNet
(which otherwise says "Please compile with DMLC_USE_S3=1"). Calls whose paths are local go to MXNet
unchanged. `disable()` puts MXNet's constructors back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import mxnet as mx

from .adapters.mxnet import ImageRecordIter, MNISTIter

# constructor name → (its drop-in, the arguments that hold paths)
ROUTES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "MNISTIter": (MNISTIter, ("image", "label")),
    "ImageRecordIter": (ImageRecordIter, ("path_imgrec", "path_imgidx")),
}
_MODULES = (mx.io, mx.io.io)


def is_remote(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def _routed(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    drop_in, path_args = ROUTES[name]

    @functools.wraps(original)
    def constructor(*args: Any, **kwargs: Any) -> Any:
        if any(is_remote(kwargs.get(arg)) for arg in path_args):
            return drop_in(*args, **kwargs)
        return original(*args, **kwargs)

    constructor.__prefetchd_original__ = original  # type: ignore[attr-defined]
    return constructor


def enable() -> None:
    """Route s3:// paths of MXNet's iterator constructors through prefetchd (idempotent)."""
    for name in ROUTES:
        for module in _MODULES:
            current = getattr(module, name)
            if not hasattr(current, "__prefetchd_original__"):
                setattr(module, name, _routed(name, current))


def disable() -> None:
    """Give MXNet its own constructors back."""
    for name in ROUTES:
        for module in _MODULES:
            current = getattr(module, name)
            original = getattr(current, "__prefetchd_original__", None)
            if original is not None:
                setattr(module, name, original)


def enabled() -> bool:
    return all(hasattr(getattr(module, name), "__prefetchd_original__") for name in ROUTES for module in _MODULES)


enable()
