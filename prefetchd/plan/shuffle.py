"""Permutations as pure functions of (seed, epoch, n): the same order on every machine and numpy version.

Only the bit generator's raw output is used (NEP 19 keeps PCG64's stream stable across numpy releases;
`Generator.permutation` carries no such promise), turned into an order by a stable sort of random keys.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Int64Array = NDArray[np.int64]

_SEED_MASK = (1 << 64) - 1


def _raw_keys(n: int, *, seed: int, epoch: int, stream: int) -> NDArray[np.uint64]:
    bits = np.random.PCG64([seed & _SEED_MASK, epoch & _SEED_MASK, stream])
    keys: NDArray[np.uint64] = bits.random_raw(n)
    return keys


def permutation(n: int, *, seed: int, epoch: int) -> Int64Array:
    """A permutation of range(n) (int64)."""
    keys = _raw_keys(n, seed=seed, epoch=epoch, stream=0)
    return np.argsort(keys, kind="stable").astype(np.int64)


def windowed_permutation(n: int, window: int, *, seed: int, epoch: int) -> Int64Array:
    """A permutation of range(n) that visits windows of `window` consecutive indices one after another.

    Windows come in a random order and indices are shuffled within each window, so a reader needs only
    one window's bytes at a time; with `window >= n` this is a full permutation.
    """
    if window >= n:
        return permutation(n, seed=seed, epoch=epoch)
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    window_of = np.arange(n, dtype=np.int64) // window
    window_rank = permutation(int(window_of[-1]) + 1, seed=seed, epoch=epoch)[window_of]
    within = _raw_keys(n, seed=seed, epoch=epoch, stream=1)
    order: Int64Array = np.lexsort((within, window_rank)).astype(np.int64)
    return order
