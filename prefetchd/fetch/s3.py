"""S3 (and S3-compatible stores) as a source: one aiobotocore client, HEAD to pin, ranged GETs to read.

The only module that sees botocore's and aiohttp's exception types; `_translate` turns them into ours,
raised `from` the original so the cause is kept. Every ranged GET carries `If-Match` with the ETag pinned
at open, so an object overwritten mid-epoch is `ObjectChanged`, never a mix of two versions. botocore
retries a request that fails before its body; a body that breaks mid-read is resumed here from the
last byte received, under `RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.httpsession import get_cert_path

from prefetchd_client.errors import (
    AccessDenied,
    ObjectChanged,
    ObjectNotFound,
    PrefetchdError,
    SourceError,
    SourceUnavailable,
)

from ..config import S3Settings
from .http11 import ResponseHead, expected_content_range
from .policy import RetryPolicy
from .range_get import BodyBroken, RangeGetter, Refused
from .source import ObjectInfo, parse_s3_url

log = logging.getLogger("prefetchd.fetch.s3")

DEFAULT_REGION = "us-east-1"  # what dmlc-core's S3 filesystem falls back to, with the same warning
_BODY_ERRORS = (
    ResponseStreamingError,
    IncompleteReadError,
    ReadTimeoutError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
}
_CHANGED = {"412", "PreconditionFailed", "416", "InvalidRange"}
PRESIGN_EXPIRES_S = 3600
LEAN_CONNECTIONS_PER_POOL = 8
LEAN_PAUSE_AFTER_THROTTLE_S = 1.0  # a 503 or 500 sends every range through aiobotocore's backoff for this long
PRESIGN_REUSE_S = 300.0  # a URL is signed again after this, long before it expires


def _translate(exc: Exception, url: str, offset: int | None = None) -> PrefetchdError:
    """Our error for a botocore/aiohttp failure on `url`, with what the user can do about it."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
        if code in _NOT_FOUND or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "key"
            return ObjectNotFound(f"ObjectNotFound: {url} ({detail}) — check the {what} and region", url=url)
        if code in _DENIED or status == 403:
            return AccessDenied(
                f"AccessDenied: {url} ({detail}) — the daemon's credentials may not read it; "
                "check the bucket policy and the credentials the daemon logged at start-up",
                url=url,
            )
        if code in _CHANGED or status in (412, 416):
            return ObjectChanged(
                f"ObjectChanged: {url} was overwritten after the stream opened it ({detail}); "
                "the epoch would mix two versions, so it stops here — reopen the stream",
                url=url,
                offset=offset,
            )
        return SourceUnavailable(f"{url}: the store answered {detail}: {error.get('Message', '')}", url=url)
    if isinstance(exc, NoCredentialsError):
        return AccessDenied(
            f"{url}: the daemon found no AWS credentials (set S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role)",
            url=url,
        )
    if isinstance(exc, EndpointConnectionError):
        return SourceUnavailable(f"{url}: cannot reach the S3 endpoint ({exc})", url=url)
    return SourceUnavailable(f"{url}: {type(exc).__name__}: {exc}", url=url, offset=offset)


class S3Source:
    """Reads `s3://` URLs through one aiobotocore client with a bounded connection pool.

    With `lean=True` the bulk bytes of ranged GETs go through `RangeGetter` instead, on URLs aiobotocore
    presigns; any answer but the exact 206 asked for sends that range back through aiobotocore, which
    retries, follows redirects and names the error.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        max_connections: int,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        lean: bool = True,
    ) -> None:
        self.settings = settings
        self.max_connections = max_connections
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._stack = AsyncExitStack()
        self._client: Any = None
        self.region: str | None = None
        self.lean: RangeGetter | None = None
        self._want_lean = lean
        self._presigned: dict[str, tuple[str, float]] = {}
        self.fallbacks = 0  # ranges the lean path handed back to aiobotocore
        self._lean_resumes_at = 0.0  # monotonic time before which ranges skip the lean path

    async def __aenter__(self) -> S3Source:
        session = get_session()
        if self.settings.profile:
            session.set_config_variable("profile", self.settings.profile)
        self.region = self.settings.region or session.get_config_variable("region")
        if not self.region:
            log.warning("no AWS region set (S3_REGION, AWS_REGION or a profile); using %s", DEFAULT_REGION)
            self.region = DEFAULT_REGION
        config = AioConfig(
            signature_version="s3v4",  # requests are SigV4 anyway; presigned URLs must be too
            max_pool_connections=self.max_connections,
            retries={"mode": "standard", "total_max_attempts": self.retry.max_attempts},  # counts the first
            connect_timeout=10,
            read_timeout=30,
            s3={"addressing_style": self.settings.addressing_style},
        )
        credentials: dict[str, Any] = {}
        if self.settings.access_key_id:
            credentials = {
                "aws_access_key_id": self.settings.access_key_id,
                "aws_secret_access_key": self.settings.secret_access_key,
                "aws_session_token": self.settings.session_token,
            }
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=self.region,
                endpoint_url=self.settings.endpoint_url,
                verify=None if self.settings.verify_ssl else False,  # None: AWS_CA_BUNDLE or botocore's bundle
                config=config,
                **credentials,
            )
        )
        if self._want_lean:
            # aiobotocore's pool is max_connections for the whole daemon; the lean path lets streams that
            # read at once (several clients, or batches read as pieces) have more, within a bound
            self.lean = RangeGetter(
                ssl_context=self._ssl_context(session), max_connections=LEAN_CONNECTIONS_PER_POOL * self.max_connections
            )
            self._stack.callback(self.lean.close)
        self._log_settings(session)
        return self

    def _ssl_context(self, session: Any) -> ssl.SSLContext:
        """The same trust as aiobotocore's: AWS_CA_BUNDLE or botocore's bundle, or none if verify_ssl is off."""
        if not self.settings.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=get_cert_path(session.get_config_variable("ca_bundle") or True))

    def _log_settings(self, session: Any) -> None:
        names = ", ".join(self.settings.env_names_used) or "none"
        method = "explicit S3_*/AWS_* keys" if self.settings.access_key_id else "the AWS credential chain"
        log.info(
            "S3: endpoint=%s region=%s addressing=%s verify_ssl=%s bulk reads=%s credentials from %s; "
            "variables used: %s",
            self.settings.endpoint_url or "AWS default",
            self.region,
            self.settings.addressing_style,
            self.settings.verify_ssl,
            "lean" if self.lean else "aiobotocore",
            method,
            names,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def stat(self, url: str) -> ObjectInfo:
        location = parse_s3_url(url)
        try:
            head = await self._client.head_object(Bucket=location.bucket, Key=location.key)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, url) from exc
        return ObjectInfo(url, int(head["ContentLength"]), str(head["ETag"]))

    async def open(self, url: str, head_bytes: int) -> tuple[ObjectInfo, bytes]:
        """One ranged GET instead of a HEAD and then a GET: its Content-Range gives the size, its ETag the version.

        An empty object answers a range with 416; a body that breaks is read again the careful way.
        """
        location = parse_s3_url(url)
        try:
            response = await self._client.get_object(
                Bucket=location.bucket, Key=location.key, Range=f"bytes=0-{max(head_bytes, 1) - 1}"
            )
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                return await self.stat(url), b""
            raise _translate(exc, url) from exc
        except BotoCoreError as exc:
            raise _translate(exc, url) from exc
        body = response["Body"]
        try:
            head = await body.read()
        except _BODY_ERRORS:
            head = None
        finally:
            body.close()
        size = _total_size(response)
        info = ObjectInfo(url, size if size is not None else len(head or b""), str(response["ETag"]))
        if head is None or size is None or len(head) != min(head_bytes, info.size):
            info = await self.stat(url)  # an odd answer: take the slow, checked path
            buffer = bytearray(min(head_bytes, info.size))
            await self.read_range(info, 0, memoryview(buffer))
            head = bytes(buffer)
        return info, head[:head_bytes]

    async def read_range(self, info: ObjectInfo, start: int, out: memoryview) -> None:
        """Fill `out` from byte `start`, resuming a broken body from the last byte received.

        Tries that bring no new byte count against `retry.max_attempts`; one that does starts that count
        afresh, within `retry.max_tries` in all.
        """
        location = parse_s3_url(info.url)
        done = 0
        attempt = tries = 1
        while done < len(out):
            first = start + done
            try:
                done += await self._get_into(location.bucket, location.key, info, first, out[done:])
            except PartialRead as exc:
                done += exc.received
                attempt = 1 if exc.received else attempt
                cause = exc.__cause__ or exc
                if not self.retry.should_retry(attempt) or tries >= self.retry.max_tries:
                    raise SourceUnavailable(
                        f"{info.url}: reading bytes {start}-{start + len(out) - 1} broke off {tries} times, "
                        f"{attempt} in a row with no new byte; last error: {type(cause).__name__}: {cause}",
                        url=info.url,
                        offset=start + done,
                    ) from cause
                log.info("%s: body broke at byte %d (%s); resuming", info.url, start + done, cause)
                await asyncio.sleep(self.retry.backoff_s(attempt, self._rng))
                attempt += 1
                tries += 1
            except (ClientError, BotoCoreError) as exc:
                raise _translate(exc, info.url, first) from exc

    async def _get_into(self, bucket: str, key: str, info: ObjectInfo, first: int, out: memoryview) -> int:
        """One ranged GET; returns how many bytes reached `out` before the body ended or broke."""
        if self.lean is not None and time.monotonic() >= self._lean_resumes_at:
            try:
                return await self._lean_get_into(bucket, key, info, first, out)
            except Refused as exc:
                self.fallbacks += 1
                if exc.status in (401, 403):
                    self._presigned.pop(info.url, None)  # expired credentials: sign again next time
                if exc.status in (500, 503):  # S3 asks us to slow down: botocore's retries back off, so let it
                    self._lean_resumes_at = time.monotonic() + LEAN_PAUSE_AFTER_THROTTLE_S
                log.debug("%s: bytes %d+%d: %s; read through aiobotocore instead", info.url, first, len(out), exc)
        return await self._botocore_get_into(bucket, key, info, first, out)

    async def _lean_get_into(self, bucket: str, key: str, info: ObjectInfo, first: int, out: memoryview) -> int:
        assert self.lean is not None
        url = await self._presigned_url(info.url, bucket, key)
        wanted_range = expected_content_range(first, first + len(out) - 1, info.size)

        def accept(head: ResponseHead) -> bool:
            return head.status == 206 and head.content_range == wanted_range and head.etag in (None, info.version)

        try:
            await self.lean.get_into(url, first, out, if_match=info.version, accept=accept)
        except BodyBroken as exc:
            raise PartialRead(exc.received) from exc
        except (OSError, TimeoutError) as exc:  # no connection at all
            raise PartialRead(0) from exc
        return len(out)

    async def _presigned_url(self, url: str, bucket: str, key: str) -> str:
        """A presigned GET URL for the object: aiobotocore resolves the endpoint, addressing and credentials."""
        now = time.monotonic()
        cached = self._presigned.get(url)
        if cached is not None and now - cached[1] < PRESIGN_REUSE_S:
            return cached[0]
        try:
            signed = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_EXPIRES_S
            )
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, url) from exc
        self._presigned[url] = (str(signed), now)
        return str(signed)

    async def _botocore_get_into(self, bucket: str, key: str, info: ObjectInfo, first: int, out: memoryview) -> int:
        last = first + len(out) - 1
        response = await self._client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={first}-{last}", IfMatch=info.version
        )
        self._check_range(response, info, first, last)
        body = response["Body"]
        received = 0
        try:
            while received < len(out):
                n = await body.readinto(out[received:])
                if n == 0:
                    break
                received += n
        except _BODY_ERRORS as exc:
            raise PartialRead(received) from exc
        finally:
            body.close()
        if received < len(out):
            raise PartialRead(received)
        return received

    @staticmethod
    def _check_range(response: dict[str, Any], info: ObjectInfo, first: int, last: int) -> None:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        expected = f"bytes {first}-{last}/{info.size}"
        if status != 206 or response.get("ContentRange") != expected:
            raise SourceError(
                f"{info.url}: asked for {expected}, the store answered HTTP {status} "
                f"with Content-Range {response.get('ContentRange')!r}; refusing the bytes",
                url=info.url,
                offset=first,
            )
        if response.get("ETag") not in (None, info.version):
            raise ObjectChanged(
                f"ObjectChanged: {info.url} has ETag {response.get('ETag')}, pinned {info.version} at open",
                url=info.url,
                offset=first,
            )


def _total_size(response: dict[str, Any]) -> int | None:
    """The object's size from a ranged GET: after the slash of `Content-Range: bytes a-b/size`."""
    content_range = response.get("ContentRange")
    if content_range:
        total = str(content_range).rpartition("/")[2]
        return int(total) if total.isdigit() else None
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:  # the whole object came back
        return int(response.get("ContentLength", 0))
    return None


class PartialRead(Exception):
    """A body ended or broke after `received` bytes; the caller resumes from there."""

    def __init__(self, received: int) -> None:
        super().__init__(f"body ended after {received} bytes")
        self.received = received
