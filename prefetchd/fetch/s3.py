"""S3 (and S3-compatible stores) as a source: one aiobotocore client, HEAD to pin, ranged GETs to read.

Every ranged GET carries `If-Match` with the ETag pinned at open, so an object overwritten mid-epoch is
`ObjectChanged`, never a mix of two versions. Retries are ours, not botocore's (its client makes one try),
so that one `RetryPolicy` governs them all and every 503 reaches the bucket's `AdmissionGate`: a body that
breaks or stalls is resumed from the last byte received, a 503 SlowDown backs off and lowers the requests
in flight (AIMD), a 500 backs off, an expired session token renews the credentials, and a 403, 404, 412 or
416 fails at once. `s3_errors` says which failure is which.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.credentials import create_credential_resolver
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import get_cert_path

from prefetchd_client.errors import ObjectChanged, PrefetchdError, SourceError, SourceUnavailable

from ..config import S3Settings
from .admission import AdmissionGate, AdmissionStatistics, Ending, Ticket
from .aimd import AimdLimit
from .credentials import RenewableChain, RenewableCredentials, install_renewable_chain
from .hedge import NO_HEDGES, HedgePolicy, Hedger, HedgeStatistics
from .http11 import ResponseHead, expected_content_range
from .policy import DEFAULT_STALL_TIMEOUT_S, Retries, RetryBudget, RetryPolicy
from .race import race
from .range_get import BodyBroken, Progress, RangeGetter, Refused
from .s3_errors import BODY_ERRORS, Failure, TryFailed, classify, describe, expired_token_error, translate
from .source import ObjectInfo, S3Location, parse_s3_url

log = logging.getLogger("prefetchd.fetch.s3")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_REGION = "us-east-1"  # what dmlc-core's S3 filesystem falls back to, with the same warning
PRESIGN_EXPIRES_S = 3600
LEAN_CONNECTIONS_PER_POOL = 8
PRESIGN_REUSE_S = 300.0  # a URL is signed again after this, long before it expires
# what a refused lean GET means without its error document: these statuses say the same whatever their code
_REFUSALS = {
    429: Failure.THROTTLED,
    503: Failure.THROTTLED,
    500: Failure.TRANSIENT,
    502: Failure.TRANSIENT,
    504: Failure.TRANSIENT,
}


@dataclass(frozen=True, slots=True)
class S3Statistics:
    requests: int  # tries sent (a lean try handed to aiobotocore counts once)
    bytes_received: int  # body bytes of ranged GETs that reached their buffers, broken tries' included
    retries: int
    throttled: int  # tries answered 503 SlowDown (or 429)
    transient: int  # tries answered 500, 502, 504 or RequestTimeout
    broken: int  # tries with no answer, or whose body broke off or stalled
    expired_token: int  # tries answered ExpiredToken
    credential_renewals: int
    lean_fallbacks: int  # lean tries whose answer (an error, a redirect) went to aiobotocore to be read
    retry_budget_left: float
    buckets: tuple[AdmissionStatistics, ...]  # each bucket's requests in flight and its AIMD limit
    hedges: HedgeStatistics = NO_HEDGES  # second requests raced against slow GETs, all buckets together
    hedge_bytes: int = 0  # body bytes the hedges received (those of lost hedges are the extra transfer)

    def bucket(self, name: str) -> AdmissionStatistics:
        return next(gate for gate in self.buckets if gate.name == name)


class S3Source:
    """Reads `s3://` URLs through one aiobotocore client with a bounded connection pool.

    With `lean=True` the bulk bytes of ranged GETs go through `RangeGetter` instead, on URLs aiobotocore
    presigns; a 503 or 500 there is retried there, and any other answer but the exact 206 asked for is
    read through aiobotocore, which follows redirects and names the error. With a `hedge` policy, a GET
    that runs far behind its peers is raced by a second one for its missing bytes (`race.py`). `sleep`,
    `clock` and `rng` are injected so that tests run the retry schedule on a fake clock.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        max_connections: int,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        lean: bool = True,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        hedge: HedgePolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.max_connections = max_connections
        self.retry = retry or RetryPolicy()
        self.stall_timeout_s = stall_timeout_s
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._clock = clock
        self.hedge = hedge
        self._hedgers: dict[str, Hedger] = {}
        self._budget = RetryBudget(self.retry)
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._chain: RenewableChain | None = None
        self.region: str | None = None
        self.lean: RangeGetter | None = None
        self._want_lean = lean
        self._presigned: dict[str, tuple[str, float, int]] = {}  # URL → (presigned URL, when, credentials' generation)
        self._gates: dict[str, AdmissionGate] = {}
        self._counts: Counter[str] = Counter()
        self.fallbacks = 0  # ranges the lean path handed to aiobotocore

    @property
    def max_in_flight(self) -> int:
        """The most requests the fetch path sends at once, for all streams: where each bucket's limit starts."""
        return LEAN_CONNECTIONS_PER_POOL * self.max_connections if self._want_lean else self.max_connections

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
            retries={"mode": "standard", "total_max_attempts": 1},  # one try: the retries are ours
            connect_timeout=10,
            read_timeout=self.stall_timeout_s,  # no byte for this long: the try broke, and is resumed
            s3={"addressing_style": self.settings.addressing_style},
        )
        credentials: dict[str, Any] = {}
        if self.settings.access_key_id:
            credentials = {
                "aws_access_key_id": self.settings.access_key_id,
                "aws_secret_access_key": self.settings.secret_access_key,
                "aws_session_token": self.settings.session_token,
            }
        else:
            region = self.region  # the chain's own clients (STS, SSO) use the region S3's does, as botocore's would
            self._chain = install_renewable_chain(
                session, lambda: create_credential_resolver(session, region_name=region)
            )
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
                ssl_context=self._ssl_context(session),
                max_connections=self.max_in_flight,
                idle_timeout_s=self.stall_timeout_s,
            )
            self._stack.callback(self.lean.close)
        self._log_settings()
        return self

    def _ssl_context(self, session: Any) -> ssl.SSLContext:
        """The same trust as aiobotocore's: AWS_CA_BUNDLE or botocore's bundle, or none if verify_ssl is off."""
        if not self.settings.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=get_cert_path(session.get_config_variable("ca_bundle") or True))

    def _log_settings(self) -> None:
        names = ", ".join(self.settings.env_names_used) or "none"
        method = "explicit S3_*/AWS_* keys" if self.settings.access_key_id else "the AWS credential chain"
        log.info(
            "S3: endpoint=%s region=%s addressing=%s verify_ssl=%s bulk reads=%s credentials from %s; "
            "variables used: %s; %s, stall timeout %g s, hedging %s",
            self.settings.endpoint_url or "AWS default",
            self.region,
            self.settings.addressing_style,
            self.settings.verify_ssl,
            "lean" if self.lean else "aiobotocore",
            method,
            names,
            self.retry,
            self.stall_timeout_s,
            self.hedge or "off",
        )

    async def __aexit__(self, *exc: object) -> None:
        log.info("S3 at exit: %r", self)
        await self._stack.aclose()

    # the operations

    async def stat(self, url: str) -> ObjectInfo:
        location = parse_s3_url(url)

        async def head() -> Any:
            return await self._client.head_object(Bucket=location.bucket, Key=location.key)

        try:
            answer = await self._request(url, location.bucket, head, head=True)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, url) from exc
        return ObjectInfo(url, int(answer["ContentLength"]), str(answer["ETag"]))

    async def request(self, url: str, operation: str, **params: Any) -> dict[str, Any]:
        """One S3 call by botocore's name (`list_objects_v2`, `upload_part`, ...), for the tools that list and write.

        The same retry policy, bucket gate and error translation as the reads, so botocore stays in this module;
        `params` are botocore's (a `Body` must be bytes, to be sent again on a retry). `url` names the object in
        errors.
        """
        method = getattr(self._client, operation)

        async def call() -> Any:
            return await method(**params)

        try:
            answer: dict[str, Any] = await self._request(url, params["Bucket"], call, head=operation == "head_object")
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, url) from exc
        return answer

    async def open(self, url: str, head_bytes: int) -> tuple[ObjectInfo, bytes]:
        """One ranged GET instead of a HEAD and then a GET: its Content-Range gives the size, its ETag the version.

        An empty object answers a range with 416; a body that breaks is read again the careful way.
        """
        location = parse_s3_url(url)

        async def get_head() -> Any:
            return await self._client.get_object(
                Bucket=location.bucket, Key=location.key, Range=f"bytes=0-{max(head_bytes, 1) - 1}"
            )

        try:
            response = await self._request(url, location.bucket, get_head)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                return await self.stat(url), b""
            raise translate(exc, url) from exc
        except BotoCoreError as exc:
            raise translate(exc, url) from exc
        body = response["Body"]
        try:
            head = await body.read()
        except BODY_ERRORS:
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
        retries = Retries(self.retry, self._budget, self._rng)
        what = f"reading bytes {start}-{start + len(out) - 1}"
        done = 0
        while done < len(out):
            try:
                async with self._admitted(location.bucket) as generation:
                    got = await self._timed_get_into(location, info, start + done, out[done:], generation)
                done += got
                self._counts["bytes"] += got
            except TryFailed as exc:
                done += exc.received
                self._counts["bytes"] += exc.received
                await self._before_retry(exc, retries, info.url, what, start + done)

    # one try, and what to do after a failed one

    async def _request(self, url: str, bucket: str, call: Callable[[], Awaitable[T]], *, head: bool = False) -> T:
        """`call()` (one botocore request) under the retry policy; raises botocore's error when it is final."""
        retries = Retries(self.retry, self._budget, self._rng)
        while True:
            try:
                async with self._admitted(bucket):
                    try:
                        return await call()
                    except (ClientError, BotoCoreError) as exc:
                        failure = classify(exc, head=head and self._signs_with_a_token())
                        if failure is None:
                            raise
                        raise TryFailed(failure, describe(exc)) from exc
            except TryFailed as exc:
                await self._before_retry(exc, retries, url, "a request", None)

    @asynccontextmanager
    async def _admitted(self, bucket: str) -> AsyncIterator[int]:
        """One try, admitted by the bucket's gate; yields the credentials' generation it signs with."""
        async with self._gate(bucket).admitted() as ticket:
            generation = self._chain.credentials.generation if self._chain and self._chain.credentials else 0
            with self._accounted(ticket):
                try:
                    yield generation
                except TryFailed as exc:
                    exc.generation = generation
                    raise
            self._budget.earn()

    @contextmanager
    def _accounted(self, ticket: Ticket) -> Iterator[None]:
        """Count one try (a hedge's too) and tell its ticket how it ended, for the bucket's AIMD limit."""
        self._counts["requests"] += 1
        try:
            yield
        except TryFailed as exc:
            self._counts[exc.failure.value] += 1
            if exc.failure is Failure.THROTTLED:
                ticket.ending = Ending.THROTTLED
            raise
        ticket.ending = Ending.SUCCEEDED

    def _hedger(self, bucket: str) -> Hedger | None:
        if self.hedge is None:
            return None
        hedger = self._hedgers.get(bucket)
        if hedger is None:
            hedger = self._hedgers[bucket] = Hedger(self.hedge)
        return hedger

    def _gate(self, bucket: str) -> AdmissionGate:
        gate = self._gates.get(bucket)
        if gate is None:
            gate = self._gates[bucket] = AdmissionGate(bucket, AimdLimit(self.max_in_flight))
        return gate

    async def _before_retry(self, exc: TryFailed, retries: Retries, url: str, what: str, offset: int | None) -> None:
        """Wait as the policy says before the next try, or raise the error that ends the read."""
        cause = exc.__cause__ or exc
        renewed = False
        if exc.failure is Failure.EXPIRED_TOKEN:
            renewed = await self._renew_credentials(exc, url)
        delay = retries.next_delay(progressed=exc.received > 0)
        if delay is None:
            if exc.failure is Failure.EXPIRED_TOKEN:
                raise expired_token_error(url, str(exc), renewable=True) from cause
            raise SourceUnavailable(
                f"{url}: {what} failed {_times(retries.tries)}; gave up because {retries.stop_reason}; "
                f"last error: {exc}",
                url=url,
                offset=offset,
            ) from cause
        self._counts["retries"] += 1
        level = logging.DEBUG if exc.failure is Failure.THROTTLED else logging.INFO
        log.log(level, "%s: %s: %s; try %d in %.3f s", url, what, exc, retries.tries, 0.0 if renewed else delay)
        if not renewed:
            await self._sleep(delay)

    async def _renew_credentials(self, exc: TryFailed, url: str) -> bool:
        """Whether requests now sign with a token other than the one S3 called expired."""
        credentials = self._renewable()
        if credentials is None:
            raise expired_token_error(url, str(exc), renewable=False) from (exc.__cause__ or exc)
        try:
            renewed = await credentials.renew(exc.generation)
        except BotoCoreError as error:
            raise SourceUnavailable(
                f"{url}: S3 said the session token expired, and asking the credential chain again failed: {error}",
                url=url,
            ) from error
        if renewed:
            self._presigned.clear()  # each presigned URL carries the old token
        return renewed

    def _signs_with_a_token(self) -> bool:
        """Whether requests may carry a session token, which can expire (keys alone do not)."""
        return self._chain is not None or bool(self.settings.session_token)

    def _renewable(self) -> RenewableCredentials | None:
        return self._chain.credentials if self._chain is not None else None

    # one try, raced by a hedge when it runs late

    async def _timed_get_into(
        self, location: S3Location, info: ObjectInfo, first: int, out: memoryview, generation: int
    ) -> int:
        """One try for `out` (admitted by the caller); when it runs far behind its peers, a hedge races it."""
        hedger = self._hedger(location.bucket)
        if hedger is None:
            return await self._get_into(location, info, first, out, generation)
        deadlines = hedger.deadlines(len(out))
        if deadlines is None:  # no hedge can go: time it, for the peers of those that come later
            progress = Progress(self._clock, hedger.answered)
            started = progress.started_at
            got = await self._get_into(location, info, first, out, generation, progress=progress)
            first_byte_s = None if progress.first_byte_at is None else progress.first_byte_at - started
            hedger.completed(len(out), self._clock() - started, first_byte_s)
            return got

        def first_try(progress: Progress) -> Coroutine[Any, Any, int]:
            return self._get_into(location, info, first, out, generation, progress=progress)

        def hedge(offset: int, progress: Progress) -> Coroutine[Any, Any, int] | None:
            return self._hedge_into(location, info, first + offset, out[offset:], generation, progress)

        result = await race(len(out), first_try, hedge, deadlines=deadlines, hedger=hedger, clock=self._clock)
        if result.error is None:
            return len(out)
        if isinstance(result.error, TryFailed):
            result.error.received = result.covered  # the hedge may have brought bytes past the first's
        raise result.error

    def _hedge_into(
        self, location: S3Location, info: ObjectInfo, first: int, out: memoryview, generation: int, progress: Progress
    ) -> Coroutine[Any, Any, int] | None:
        """A hedge's GET on a fresh connection, if the bucket's gate has room for it now; None if not (a hedge
        never waits behind requests the gate holds back: it would come too late, and add to a throttled load)."""
        gate = self._gate(location.bucket)
        ticket = gate.admit_now()
        if ticket is None:
            return None

        async def get() -> int:
            try:
                with self._accounted(ticket):
                    return await self._get_into(location, info, first, out, generation, progress=progress, fresh=True)
            finally:
                self._counts["hedge_bytes"] += progress.received
                gate.end(ticket)

        return get()

    # the two ways to GET a range

    async def _get_into(
        self,
        location: S3Location,
        info: ObjectInfo,
        first: int,
        out: memoryview,
        generation: int,
        *,
        progress: Progress | None = None,
        fresh: bool = False,
    ) -> int:
        """One ranged GET; returns len(out), or raises `TryFailed` with the bytes that reached `out`."""
        if self.lean is not None:
            try:
                return await self._lean_get_into(location, info, first, out, generation, progress, fresh)
            except Refused as exc:
                failure = _REFUSALS.get(exc.status or 0)
                if failure is not None:
                    raise TryFailed(failure, str(exc)) from exc
                self.fallbacks += 1
                if exc.status in (400, 401, 403):
                    self._presigned.pop(info.url, None)  # perhaps expired credentials: sign again next time
                log.debug("%s: bytes %d+%d: %s; read through aiobotocore instead", info.url, first, len(out), exc)
        return await self._botocore_get_into(location, info, first, out, progress)

    async def _lean_get_into(
        self,
        location: S3Location,
        info: ObjectInfo,
        first: int,
        out: memoryview,
        generation: int,
        progress: Progress | None,
        fresh: bool,
    ) -> int:
        assert self.lean is not None
        url = await self._presigned_url(info.url, location, generation)
        wanted_range = expected_content_range(first, first + len(out) - 1, info.size)

        def accept(head: ResponseHead) -> bool:
            return head.status == 206 and head.content_range == wanted_range and head.etag in (None, info.version)

        try:
            await self.lean.get_into(
                url, first, out, if_match=info.version, accept=accept, progress=progress, fresh=fresh
            )
        except BodyBroken as exc:
            raise TryFailed(Failure.BROKEN, str(exc), received=exc.received) from exc
        except (OSError, TimeoutError) as exc:  # no connection at all
            raise TryFailed(Failure.BROKEN, f"{type(exc).__name__}: {exc}") from exc
        return len(out)

    async def _presigned_url(self, url: str, location: S3Location, generation: int) -> str:
        """A presigned GET URL for the object: aiobotocore resolves the endpoint, addressing and credentials."""
        now = time.monotonic()
        cached = self._presigned.get(url)
        if cached is not None and now - cached[1] < PRESIGN_REUSE_S and cached[2] == generation:
            return cached[0]
        try:
            signed = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": location.bucket, "Key": location.key}, ExpiresIn=PRESIGN_EXPIRES_S
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, url) from exc
        self._presigned[url] = (str(signed), now, generation)
        return str(signed)

    async def _botocore_get_into(
        self, location: S3Location, info: ObjectInfo, first: int, out: memoryview, progress: Progress | None
    ) -> int:
        last = first + len(out) - 1
        try:
            response = await self._client.get_object(
                Bucket=location.bucket, Key=location.key, Range=f"bytes={first}-{last}", IfMatch=info.version
            )
        except (ClientError, BotoCoreError) as exc:
            raise _failed_try(exc, info.url, first) from exc
        self._check_range(response, info, first, last)
        if progress is not None:
            progress.arrived()
        body = response["Body"]
        received = 0
        try:
            while received < len(out):
                n = await body.readinto(out[received:])
                if n == 0:
                    break
                received += n
                if progress is not None:
                    progress.received = received
        except BODY_ERRORS as exc:
            raise TryFailed(Failure.BROKEN, describe(exc), received=received) from exc
        finally:
            body.close()
        if received < len(out):
            raise TryFailed(Failure.BROKEN, f"the body ended after {received} of {len(out)} bytes", received=received)
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

    # what it did so far

    def statistics(self) -> S3Statistics:
        counts = self._counts
        return S3Statistics(
            requests=counts["requests"],
            bytes_received=counts["bytes"],
            retries=counts["retries"],
            throttled=counts[Failure.THROTTLED.value],
            transient=counts[Failure.TRANSIENT.value],
            broken=counts[Failure.BROKEN.value],
            expired_token=counts[Failure.EXPIRED_TOKEN.value],
            credential_renewals=credentials.renewals if (credentials := self._renewable()) else 0,
            lean_fallbacks=self.fallbacks,
            retry_budget_left=self._budget.left,
            buckets=tuple(gate.statistics() for gate in self._gates.values()),
            hedges=sum((hedger.statistics() for hedger in self._hedgers.values()), NO_HEDGES),
            hedge_bytes=counts["hedge_bytes"],
        )

    def __repr__(self) -> str:
        s = self.statistics()
        limits = ", ".join(f"{b.name} {b.limit.limit}/{b.limit.ceiling} (lowest {b.limit.lowest})" for b in s.buckets)
        return (
            f"<S3Source {s.requests} requests, {s.retries} retries: {s.throttled} throttled, {s.transient} failed, "
            f"{s.broken} broke or stalled, {s.expired_token} expired tokens ({s.credential_renewals} renewals); "
            f"in flight at most: {limits or 'no bucket yet'}>"
        )


def _failed_try(exc: ClientError | BotoCoreError, url: str, offset: int) -> PrefetchdError | TryFailed:
    """A failed ranged GET: a `TryFailed` if another try may fare better, else our final error."""
    failure = classify(exc)
    if failure is None:
        return translate(exc, url, offset)
    return TryFailed(failure, describe(exc))


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _total_size(response: dict[str, Any]) -> int | None:
    """The object's size from a ranged GET: after the slash of `Content-Range: bytes a-b/size`."""
    content_range = response.get("ContentRange")
    if content_range:
        total = str(content_range).rpartition("/")[2]
        return int(total) if total.isdigit() else None
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:  # the whole object came back
        return int(response.get("ContentLength", 0))
    return None
