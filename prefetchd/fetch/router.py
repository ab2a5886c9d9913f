"""One place that owns the sources and picks one per URL scheme."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from ..config import Config
from .cache import ChunkCache
from .disk_cache import DiskCache
from .hedge import HedgePolicy
from .local import LocalSource
from .s3 import S3Source
from .source import ObjectInfo, Source, scheme_of

log = logging.getLogger("prefetchd.cache")


def hedge_policy(config: Config) -> HedgePolicy | None:
    """The configured hedging, or None when it is off."""
    if not config.hedge:
        return None
    return HedgePolicy(
        multiplier=config.hedge_multiplier, min_delay_s=config.hedge_min_delay_s, budget=config.hedge_budget
    )


class SourceRouter:
    """`s3://` goes to S3, `file://` and plain paths to the local filesystem."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._stack = AsyncExitStack()
        self.local = LocalSource()
        self.s3: S3Source | None = None
        self.cache: ChunkCache | None = None

    async def __aenter__(self) -> SourceRouter:
        try:
            await self._open_cache()
            self.s3 = await self._stack.enter_async_context(
                S3Source(
                    self._config.s3,
                    max_connections=self._config.max_concurrency,
                    lean=self._config.fetch_path == "lean",
                    stall_timeout_s=self._config.stall_timeout_s,
                    hedge=hedge_policy(self._config),
                )
            )
        except BaseException:
            await self._stack.aclose()  # what did open (the disk tier's lock and threads) is let go
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _open_cache(self) -> None:
        """RAM over an optional disk tier; at exit RAM spills to disk before the disk tier closes."""
        config = self._config
        disk = None
        if config.cache_dir is not None and config.cache_disk_bytes:
            disk = await self._stack.enter_async_context(DiskCache(config.cache_dir, config.cache_disk_bytes))
        if config.cache_bytes or disk is not None:
            cache = self.cache = ChunkCache(config.cache_bytes, disk)
            self._stack.push_async_callback(cache.aclose)
            self._stack.callback(lambda: log.info("epoch cache at exit: %r", cache))

    def source_for(self, url: str) -> Source:
        if scheme_of(url) == "s3":
            assert self.s3 is not None, "SourceRouter used outside its context"
            return self.s3
        return self.local

    def cache_for(self, info: ObjectInfo) -> ChunkCache | None:
        """The epoch cache for remote objects; local files have the kernel's page cache already."""
        return self.cache if scheme_of(info.url) == "s3" else None

    async def stat(self, url: str) -> ObjectInfo:
        return await self.source_for(url).stat(url)

    async def open(self, url: str, head_bytes: int) -> tuple[ObjectInfo, bytes]:
        return await self.source_for(url).open(url, head_bytes)

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        await self.source_for(info.url).read_range(info, start, out)
