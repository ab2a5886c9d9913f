"""Credentials the daemon renews when S3 says its session token has expired.

botocore refreshes temporary credentials (container and instance roles, SSO, assume-role) on its own, some
minutes before the expiry their source announced. S3 can still answer `400 ExpiredToken`: a token revoked or
rotated early, a clock that drifted, a credentials file another tool rewrote (botocore reads files once).
Then the AWS credential chain is resolved again, from the start, and requests sign with what it gives.

The session's `credential_provider` component (botocore's way to plug in credentials) is wrapped, so the
client signs with a `RenewableCredentials` that this module can swap; nothing of botocore is patched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("prefetchd.fetch.credentials")


class RenewableCredentials:
    """The credentials a client signs with, delegating to what the chain last gave; `renew()` asks it again."""

    def __init__(self, chain: Any, first: Any) -> None:
        self._chain = chain  # botocore's credential resolver: load_credentials() walks the whole chain
        self._current = first
        self.method = getattr(first, "method", "unknown")  # botocore logs and checks a credential's method
        self.generation = 0  # renewals so far; a request notes it before signing
        self.renewals = 0
        self._lock = asyncio.Lock()

    async def get_frozen_credentials(self) -> Any:
        return await self._current.get_frozen_credentials()

    async def get_account_id(self) -> Any:
        account_id = self._current.get_account_id()
        return await account_id if asyncio.iscoroutine(account_id) else account_id

    def get_deferred_property(self, name: str) -> Callable[[], Any]:
        """botocore's endpoint rules ask for the account id this way, when they need it."""
        return lambda: self._current.get_deferred_property(name)()

    async def renew(self, signed_in_generation: int) -> bool:
        """A request signed in `signed_in_generation` met ExpiredToken: resolve the chain again, unless another
        request did so since. Returns whether requests now sign with a token other than the expired one."""
        async with self._lock:
            if signed_in_generation != self.generation:
                return True  # renewed already, by a request that met the same expiry
            old = await self.get_frozen_credentials()
            fresh = await self._chain.load_credentials()
            if fresh is None:
                log.warning("S3 said the session token expired, and the credential chain now finds none")
                return False
            new = await fresh.get_frozen_credentials()
            if (new.access_key, new.token) == (old.access_key, old.token):
                log.warning("S3 said the session token expired, and %s gave the same one again", fresh.method)
                return False
            self._current = fresh
            self.method = getattr(fresh, "method", self.method)
            self.generation += 1
            self.renewals += 1
            log.info("S3 said the session token expired; renewed the credentials from %s", self.method)
            return True


class RenewableChain:
    """The session's credential provider: botocore's own chain, whose answer is wrapped to be renewable."""

    def __init__(self, build_chain: Callable[[], Any]) -> None:
        self._build_chain = build_chain  # botocore's resolver, built when a client first asks, as botocore does
        self.credentials: RenewableCredentials | None = None  # once a client has asked for them

    async def load_credentials(self) -> RenewableCredentials | None:
        chain = self._build_chain()
        first = await chain.load_credentials()
        if first is None:
            return None  # botocore then says there are no credentials, as it would have
        self.credentials = RenewableCredentials(chain, first)
        return self.credentials


def install_renewable_chain(session: Any, build_chain: Callable[[], Any]) -> RenewableChain:
    """Make the clients `session` creates sign with renewable credentials from the chain `build_chain()` gives."""
    provider = RenewableChain(build_chain)
    session.register_component("credential_provider", provider)
    return provider
