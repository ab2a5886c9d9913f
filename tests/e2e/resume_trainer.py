"""A trainer that checkpoints its iterator after every batch, for the resume tests to SIGKILL and restart.

    python -m tests.e2e.resume_trainer PLAN.json

PLAN names the iterator (`kind`: "idx" or "recordio", `args` for `idx_iter`/`recordio_iter`), the daemon's
`socket`, the `checkpoint` file, the `total` batches to reach and `pause_after`: after saving that many
batches the trainer says "paused" and waits on stdin, where the test kills it. The checkpoint holds the
iterator's `state_dict()` and a digest of every batch so far, replaced atomically (write, fsync, rename), as
a trainer stores its state next to a model checkpoint: the digests and the state always agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefetchd_client import Batch, BatchIterator, idx_iter, recordio_iter


def batch_digest(batch: Batch) -> str:
    """(epoch, batch number, pad) and a hash of every array's bytes: equal digests, equal batches."""
    digest = hashlib.sha256()
    for array in (batch.index, batch.label, batch.data):
        digest.update(array.tobytes())
    return f"{batch.epoch}:{batch.seq}:{batch.pad}:{digest.hexdigest()[:24]}"


def open_iterator(plan: dict[str, Any]) -> BatchIterator:
    args = dict(plan["args"], socket_path=plan["socket"])
    if plan["kind"] == "idx":
        return idx_iter(**args)
    args["data_shape"] = tuple(args["data_shape"])
    return recordio_iter(**args)


def save_atomically(path: Path, content: dict[str, Any]) -> None:
    """The file holds the old content or the new, never a mix, whenever the process dies."""
    partial = path.with_suffix(".partial")
    with open(partial, "w") as out:
        json.dump(content, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def train(plan: dict[str, Any]) -> None:
    checkpoint = Path(plan["checkpoint"])
    with open_iterator(plan) as batches:
        seen: list[str] = []
        if checkpoint.exists():
            saved = json.loads(checkpoint.read_text())
            batches.load_state_dict(saved["iterator"])
            seen = saved["seen"]
        while len(seen) < plan["total"]:
            try:
                batch = next(batches)
            except StopIteration:
                batches.reset()  # the next epoch
                continue
            seen.append(batch_digest(batch))  # the training step would go here
            save_atomically(checkpoint, {"iterator": batches.state_dict(), "seen": seen})
            if len(seen) == plan.get("pause_after"):
                print("paused", flush=True)
                sys.stdin.read()  # the test SIGKILLs this process here, holding a batch, the ring full
    print("done", flush=True)


if __name__ == "__main__":
    train(json.loads(Path(sys.argv[1]).read_text()))
