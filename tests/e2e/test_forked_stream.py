"""A stream belongs to the process that opened it: a forked child (a DataLoader worker) can neither read nor end it."""

from __future__ import annotations

import os

from prefetchd.testing.daemon_process import DaemonProcess
from prefetchd_client import StreamClosed, idx_iter

READ_REFUSED, READ_ALLOWED, OTHER_ERROR = 3, 4, 5


def test_a_forked_child_cannot_read_its_parents_stream_nor_close_it(
    daemon: DaemonProcess, fashion_urls: dict[str, str]
) -> None:
    urls = fashion_urls["t10k-images-idx3-ubyte"], fashion_urls["t10k-labels-idx1-ubyte"]
    with idx_iter(*urls, batch_size=1000, socket_path=daemon.socket_path) as batches:
        next(batches)
        child = os.fork()
        if child == 0:  # pragma: no cover (the child leaves by os._exit)
            code = OTHER_ERROR
            try:
                next(batches)
                code = READ_ALLOWED
            except StreamClosed as exc:
                code = READ_REFUSED if "must open a stream of its own" in str(exc) else OTHER_ERROR
            finally:
                batches.close()  # what a worker's garbage collector would do: must not tell the daemon
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == READ_REFUSED
        assert sum(1 for _ in batches) == 9, "the parent's stream goes on"
