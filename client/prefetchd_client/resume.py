"""An iterator's position as a small, versioned, JSON-serialisable dict, and the checks that load it back.

A stream's batches are a pure function of what it reads and how (objects and their versions, batch size,
shuffle and seed, partition, last-batch mode, decode options) and of (epoch, batch): the daemon plans
every epoch from those alone, and random crops and mirrors are drawn from (seed, epoch, place in the epoch).
So the state is that identity plus a position, and loading it into an iterator whose identity differs is
refused, naming each difference, rather than resuming into other batches.

Position: `batch` is the number of batches of `epoch` the trainer has taken, the one it holds included;
the next `next()` returns batch `batch` (0-based) of `epoch`, the (batch + 1)-th. `batch` may equal the
epoch's batch count: the next `next()` then ends the epoch (StopIteration), as it would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import IncompatibleState
from .protocol import Open, Opened

STATE_VERSION = 1  # bumped when a state this client writes could be misread by an older one
STATE_KIND = "prefetchd.iterator"

# decode options that change no byte of any batch: a resumed run may set them differently
_DECODE_FREE = frozenset({"preprocess_threads"})


def stream_identity(request: Open, opened: Opened) -> dict[str, Any]:
    """What a stream's batches depend on, as plain JSON values."""
    return {
        "format": request.format,
        "sources": dict(sorted(request.sources.items())),
        "objects": {
            role: {"size": info.get("size"), "version": info.get("version")}
            for role, info in sorted(opened.objects.items())
        },
        "batch_size": request.batch_size,
        "shuffle": request.shuffle,
        "reshuffle": request.reshuffle,
        "seed": request.seed,
        "num_parts": request.num_parts,
        "part_index": request.part_index,
        "last_batch": request.last_batch,
        "decode": {k: v for k, v in sorted(request.decode.items()) if k not in _DECODE_FREE},
        "batches_per_epoch": opened.batches_per_epoch,
        "samples_per_epoch": opened.samples_per_epoch,
        # the daemon's choice, from its budget: a stream resumed through another daemon pins it (see check_state)
        "shuffle_window": opened.shuffle_window,
    }


def make_state(identity: dict[str, Any], epoch: int, batch: int) -> dict[str, Any]:
    """The dict `state_dict()` returns: plain ints, strings, bools, lists and dicts only."""
    return {"kind": STATE_KIND, "version": STATE_VERSION, "epoch": epoch, "batch": batch, "stream": identity}


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a loaded state resumes, and the shuffle window its stream must use to give the same order."""

    epoch: int
    batch: int
    shuffle_window: int  # differs from the live stream's when its daemon chose another (another --budget)


def check_state(state: object, identity: dict[str, Any]) -> ResumePoint:
    """Where to resume, if `state` was saved by a stream with this `identity` (the shuffle window aside).

    Raises `IncompatibleState` naming the kind, version, position or every setting that differs.
    """
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise IncompatibleState(
            f"not a prefetchd iterator state (expected a dict with kind {STATE_KIND!r}): {_shown(state)}"
        )
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise IncompatibleState(f"iterator state has no valid version: {_shown(version)}")
    if version > STATE_VERSION:
        raise IncompatibleState(
            f"iterator state version {version} was written by a newer prefetchd-client; this one reads "
            f"version {STATE_VERSION}: upgrade prefetchd-client"
        )
    saved = state.get("stream")
    if not isinstance(saved, dict):
        raise IncompatibleState("iterator state has no 'stream' settings to check it against")
    window = saved.get("shuffle_window")
    if not _is_count(window):
        raise IncompatibleState(f"iterator state has no valid shuffle_window: {_shown(window)}")
    found = differences(saved, {**identity, "shuffle_window": window})
    if found:
        raise IncompatibleState(
            "this iterator state belongs to another stream: " + "; ".join(found) + ". Open the iterator "
            "with the settings and data the state was saved with, or start from the beginning"
        )
    epoch, batch = state.get("epoch"), state.get("batch")
    batches = identity["batches_per_epoch"]
    if not (_is_count(epoch) and _is_count(batch)) or batch > batches:
        raise IncompatibleState(
            f"iterator state position epoch={_shown(epoch)} batch={_shown(batch)} is not in the stream "
            f"(epochs from 0, batches 0 to {batches})"
        )
    return ResumePoint(epoch, batch, window)  # type: ignore[arg-type]


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Each setting or object of two stream identities that differs, said for a person."""
    found = []
    saved_objects, current_objects = saved.get("objects", {}), current["objects"]
    for name in sorted(set(saved) | set(current)):
        if name == "objects":
            continue
        before, now = saved.get(name), current.get(name)
        if before != now:
            found.append(f"{name} was {_shown(before)} when saved, is {_shown(now)} now")
    if not isinstance(saved_objects, dict):
        return [*found, f"objects was {_shown(saved_objects)} when saved"]
    sources = current.get("sources", {})
    for role in sorted(set(saved_objects) | set(current_objects)):
        before, now = saved_objects.get(role), current_objects.get(role)
        if before != now:
            where = sources.get(role, role)
            found.append(f"{where} changed since the state was saved ({_shown(before)} then, {_shown(now)} now)")
    return found


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
