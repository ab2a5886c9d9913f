"""Which requests the fault proxy breaks, and how: a seeded decision per object GET, with no I/O.

A decision depends on the seed, the request (method, path, Range) and how many times that same request
came before; not on the order in which concurrent requests arrive, nor on the signature of a presigned
URL (signed anew every few minutes). So a failing run is replayed by running it again with the same seed
and rates: the same ranges meet the same faults, however the daemon's fetches interleave.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass

_SIGV2_QUERY = {"AWSAccessKeyId", "Signature", "Expires"}


class Fault(enum.StrEnum):
    """What a faulty S3 does to one GET. The first two come before the body, the others in it.

    New kinds go last: a seed's draws for the earlier kinds stay what they were.
    """

    SLOWDOWN = "slowdown"  # HTTP 503 with S3's <Code>SlowDown</Code> error document
    INTERNAL_ERROR = "internal_error"  # HTTP 500 with <Code>InternalError</Code>
    RESET = "reset"  # part of the body, then a TCP RST
    TRUNCATE = "truncate"  # Content-Length announced, fewer bytes sent, then a clean close
    STALL = "stall"  # part of the body, then nothing more on an open connection, until the client leaves
    PAUSE = "pause"  # part of the body, then nothing for `pause_ms`, then the rest: a slow GET, not a broken one


BODY_FAULTS = (Fault.RESET, Fault.TRUNCATE, Fault.STALL, Fault.PAUSE)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """The share of object GETs that meet each fault, and the first-byte delay some of them wait.

    The faults exclude one another (a GET meets at most one), so their rates sum to at most 1. The
    delay is drawn apart from them: `latency` of the GETs wait `latency_ms` + U(0, `jitter_ms`) before
    their first byte, whatever else happens to them. A paused body waits `pause_ms` partway; with
    `pause_garbles` the bytes after the pause are inverted, so that a reader which let a paused GET write
    after another request had brought the same bytes is caught.
    """

    slowdown: float = 0.0
    internal_error: float = 0.0
    reset: float = 0.0
    truncate: float = 0.0
    stall: float = 0.0
    latency: float = 0.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    pause: float = 0.0
    pause_ms: float = 2000.0
    pause_garbles: bool = False

    def __post_init__(self) -> None:
        for name in (*(fault.value for fault in Fault), "latency"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"the {name} rate must be within [0, 1], not {rate}")
        if sum(self.of(fault) for fault in Fault) > 1.0:
            raise ValueError("the fault rates exclude one another: they must sum to at most 1")
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.pause_ms < 0:
            raise ValueError("latency_ms, jitter_ms and pause_ms must not be negative")

    def of(self, fault: Fault) -> float:
        rate: float = getattr(self, fault.value)
        return rate


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one object GET."""

    fault: Fault | None
    delay_s: float  # before the first byte of the answer
    cut_share: float  # where a reset or truncation cuts the body: a share of it, in [0, 1)

    def cut_bytes(self, body_bytes: int) -> int:
        """How many body bytes go out before the cut (or stall): at least one, and at least one short of the whole.

        Needs `body_bytes` >= 2; a shorter body cannot be cut inside.
        """
        if body_bytes < 2:
            raise ValueError(f"a body of {body_bytes} bytes has no inside to cut")
        return 1 + int(self.cut_share * (body_bytes - 1))


def decide(rates: FaultRates, seed: int, request: str, occurrence: int) -> Decision:
    """The fate of the `occurrence`-th (1-based) time `request` is seen, for this seed.

    A string seed is hashed with SHA-512 by `random.Random`, so the draw is the same in every process.
    """
    rng = random.Random(f"{seed}|{occurrence}|{request}")
    draw, delayed, jitter, cut_share = rng.random(), rng.random(), rng.random(), rng.random()
    fault = None
    edge = 0.0
    for kind in Fault:
        edge += rates.of(kind)
        if draw < edge:
            fault = kind
            break
    delay_s = (rates.latency_ms + jitter * rates.jitter_ms) / 1000 if delayed < rates.latency else 0.0
    return Decision(fault, delay_s, cut_share)


class FaultPlan:
    """The decisions of one proxy run: counts how often each request was seen, so retries get fresh draws."""

    def __init__(self, rates: FaultRates, seed: int) -> None:
        self.rates = rates
        self.seed = seed
        self._seen: Counter[str] = Counter()

    def next_decision(self, request: str) -> tuple[Decision, int]:
        """The decision for this arrival of `request`, and which arrival (1-based) it is."""
        self._seen[request] += 1
        occurrence = self._seen[request]
        return decide(self.rates, self.seed, request, occurrence), occurrence

    def __repr__(self) -> str:
        return f"<FaultPlan seed={self.seed} {self.rates} requests={len(self._seen)}>"


def request_key(method: str, path: str, range_header: str | None) -> str:
    """What identifies a request to the plan: the query (a signature) is left out on purpose."""
    return f"{method} {path} {range_header or '-'}"


def is_object_get(method: str, path: str, query: Mapping[str, str]) -> bool:
    """Whether a request reads an object's bytes: `GET /bucket/key`, plain or presigned (path-style).

    A query that only signs the request (X-Amz-*, or SigV2's three names) is still an object GET; any
    other query (`?list-type=2`, `?tagging`, `?uploads`) asks for something else.
    """
    _, bucket, key = [*path.split("/", 2), "", ""][:3]
    signature_only = all(name.startswith("X-Amz-") or name in _SIGV2_QUERY for name in query)
    return method == "GET" and bool(bucket) and bool(key) and signature_only


@dataclass(frozen=True, slots=True)
class FaultCounts:
    """What a proxy did so far: object GETs seen, first bytes delayed, each fault injected, clients gone, and
    requests refused as signed with a session token the test declared expired."""

    object_gets: int = 0
    delayed: int = 0
    slowdown: int = 0
    internal_error: int = 0
    reset: int = 0
    truncate: int = 0
    stall: int = 0
    pause: int = 0  # bodies paused partway
    pause_ended: int = 0  # paused answers that ended: sent whole, or left by the client
    expired_token: int = 0
    hung_up: int = 0  # answers the client left before their end: read-aheads cancelled when a stream closes

    def of(self, fault: Fault) -> int:
        count: int = getattr(self, fault.value)
        return count

    def since(self, earlier: FaultCounts) -> FaultCounts:
        """The counts of what happened after `earlier` was read."""
        now, then = asdict(self), asdict(earlier)
        return FaultCounts(**{name: now[name] - then[name] for name in now})

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int]) -> FaultCounts:
        return cls(**{name: int(counts.get(name, 0)) for name in asdict(cls())})
