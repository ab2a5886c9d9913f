"""What S3's, botocore's and aiohttp's failures mean: an error of ours to raise, or a try to make again.

With `s3.py`, the only module that sees botocore's and aiohttp's exception types. `classify` sorts a failed
try into a `Failure` the retry loop acts on (back off; back off and lower the concurrency; renew the
credentials; resume the body), or None: not worth another try (403, 404, 412, 416 and the other 4xx).
`translate` turns a failure into our error, raised `from` the original so the cause is kept.
"""

from __future__ import annotations

import asyncio
import enum

import aiohttp
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ResponseStreamingError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from prefetchd_client.errors import AccessDenied, ObjectChanged, ObjectNotFound, PrefetchdError, SourceUnavailable

# a body that breaks or stalls mid-read, in botocore's and aiohttp's words
BODY_ERRORS = (
    ResponseStreamingError,
    IncompleteReadError,
    HTTPClientError,  # ReadTimeoutError among them: no byte for read_timeout
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)
# a request that got no answer: the endpoint unreachable, the connection refused, reset or timed out
NO_ANSWER_ERRORS = (BotoConnectionError, *BODY_ERRORS)

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
# S3's and the AWS SDKs' names for "too many requests" (botocore/retries/standard.py lists the same family)
_THROTTLING = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
}
_TRANSIENT = {"InternalError", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"}


class Failure(enum.Enum):
    """Why a try failed, when another try may succeed."""

    BROKEN = "broken"  # no answer, or a body that broke off or stalled: resume from the last byte received
    THROTTLED = "throttled"  # 503 SlowDown and its kin: back off, and fewer requests in flight
    TRANSIENT = "transient"  # 500, 502, 504, RequestTimeout: back off
    EXPIRED_TOKEN = "expired_token"  # 400 ExpiredToken: renew the credentials


class TryFailed(Exception):
    """One try failed as `failure` says; `received` body bytes reached the caller's buffer first."""

    def __init__(self, failure: Failure, reason: str, *, received: int = 0) -> None:
        super().__init__(reason)
        self.failure = failure
        self.received = received
        self.generation = 0  # of the credentials it was signed with (`RenewableCredentials.generation`)


def status_and_code(exc: ClientError) -> tuple[int | None, str]:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status, str(exc.response.get("Error", {}).get("Code", ""))


def classify(exc: Exception, *, head: bool = False) -> Failure | None:
    """How another try could fare after `exc`; None when it would fail the same way.

    `head`: the request was a HEAD, whose error answers have no body and so no code: a 400 there is taken
    for an expired token, the only cause a well-formed HEAD meets.
    """
    if isinstance(exc, ClientError):
        status, code = status_and_code(exc)
        if code in _EXPIRED or (head and status == 400):
            return Failure.EXPIRED_TOKEN
        if code in _THROTTLING or status in (429, 503):
            return Failure.THROTTLED
        if code in _TRANSIENT or status in (500, 502, 504):
            return Failure.TRANSIENT
        return None
    if isinstance(exc, NO_ANSWER_ERRORS) and not isinstance(exc, SSLError):  # a certificate stays unverified
        return Failure.BROKEN
    return None


def describe(exc: BaseException) -> str:
    """A failure in a few words: S3's status, code and message, or the exception's type and text."""
    if isinstance(exc, ClientError):
        status, code = status_and_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        words = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
        return f"{words}: {message}" if message else words
    return f"{type(exc).__name__}: {exc}"


def translate(exc: Exception, url: str, offset: int | None = None) -> PrefetchdError:
    """Our error for a botocore/aiohttp failure on `url`, with what the user can do about it."""
    if isinstance(exc, ClientError):
        status, code = status_and_code(exc)
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
        message = exc.response.get("Error", {}).get("Message", "")
        return SourceUnavailable(f"{url}: the store answered {detail}: {message}", url=url, offset=offset)
    if isinstance(exc, NoCredentialsError):
        return AccessDenied(
            f"{url}: the daemon found no AWS credentials (set S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role)",
            url=url,
        )
    if isinstance(exc, BotoConnectionError):
        return SourceUnavailable(f"{url}: cannot reach the S3 endpoint ({exc})", url=url, offset=offset)
    return SourceUnavailable(f"{url}: {type(exc).__name__}: {exc}", url=url, offset=offset)


def expired_token_error(url: str, detail: str, *, renewable: bool) -> AccessDenied:
    """The error for a session token S3 calls expired that the daemon could not replace."""
    if renewable:
        advice = (
            "the AWS credential chain was asked again and gave no new token; check what supplies the daemon's "
            "credentials (its role, profile or credentials file)"
        )
    else:
        advice = (
            "the daemon cannot renew a token given in S3_SESSION_TOKEN/AWS_SESSION_TOKEN; restart it with fresh "
            "keys, or let it take them from a profile, container or instance role, which it renews"
        )
    return AccessDenied(f"AccessDenied: {url}: the session token has expired ({detail}) — {advice}", url=url)
