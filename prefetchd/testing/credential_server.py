"""Temporary AWS credentials served as a container's credentials endpoint serves them, rotated at will.

botocore and aiobotocore read `AWS_CONTAINER_CREDENTIALS_FULL_URI` (a loopback URL is allowed) and treat what
it gives as refreshable credentials, asking the endpoint again before they expire: the setting where a token
can expire under a running daemon. `rotate()` makes the next answer a new session token, as the real
endpoint does when it renews a role's credentials. A thread serves it: answering a small JSON document per
request needs no process of its own.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
_SERVERS = itertools.count(1)  # each server's tokens are its own, whatever a proxy remembers of earlier ones


class CredentialServer:
    """`with CredentialServer() as server:` serves credentials at `server.url`; `server.token` is the one it
    hands out now, `server.served` how many times it was asked."""

    def __init__(self, *, valid_for_s: float = 3600.0) -> None:
        self.valid_for_s = valid_for_s  # announced lifetime; long, so that botocore asks again only when told
        self.number = next(_SERVERS)
        self.generation = 1
        self.served = 0
        self.url = ""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        return f"prefetchd-test-session-token-{self.number}-{self.generation}"

    def rotate(self) -> str:
        """From now on hand out a new session token (and keys); returns the token."""
        with self._lock:
            self.generation += 1
            return self.token

    def answer(self) -> dict[str, Any]:
        """The endpoint's JSON document, as ECS and EKS Pod Identity send it."""
        with self._lock:
            self.served += 1
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.valid_for_s)
            return {
                "AccessKeyId": f"ASIATESTKEY{self.generation:08d}",
                "SecretAccessKey": f"prefetchd-test-secret-{self.generation}",
                "Token": self.token,
                "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }

    def __enter__(self) -> CredentialServer:
        credentials = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(credentials.answer()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output is for the test

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/credentials"
        self._thread = threading.Thread(target=self._server.serve_forever, name="credential-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to take its credentials from here."""
        return {FULL_URI: self.url}
