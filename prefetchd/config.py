"""The daemon's configuration: one frozen `Config`, built once by `load_config` and passed down.

Precedence: command-line flags > `PREFETCHD_*` environment > TOML file (`--config`) > defaults. This is
the only module that reads the environment. S3 settings also honour the variables MXNet's USE_S3 builds
read, ranked as dmlc-core's src/io/s3_filesys.cc ranks them: an `S3_*` name before its `AWS_*` twin.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from prefetchd_client.errors import PrefetchdError
from prefetchd_client.settings import default_socket_path

MiB = 1 << 20
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")  # json: one object per line, for log shippers (redaction.py)
FETCH_PATHS = ("lean", "botocore")


class ConfigError(PrefetchdError):
    """A setting is missing, malformed or out of range; the message names it. The CLI exits with 2."""

    code = "config_error"


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach S3 or an S3-compatible store. Secrets never appear in repr or logs."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"  # "path" for MinIO/Ceph/moto, "virtual" or "auto" for AWS
    verify_ssl: bool = True
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    # which variables supplied the values above, for the start-up log line (names only, never values)
    env_names_used: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    socket_path: Path
    s3: S3Settings = field(default_factory=S3Settings)
    max_concurrency: int = 32  # ranged GETs in flight per stream
    chunk_bytes: int = 8 * MiB  # the largest range one GET asks for
    fetch_path: str = "lean"  # bulk bytes: "lean" (range_get.py, straight into memory) or "botocore"
    stall_timeout_s: float = 10.0  # no byte for this long: the GET is dropped and made again (fetch/policy.py)
    # a GET still running after hedge_multiplier × its peers' p95 (at least hedge_min_delay_s) is raced by a
    # second one for its missing bytes, within hedge_budget more requests (fetch/hedge.py, fetch/race.py)
    hedge: bool = True
    hedge_multiplier: float = 1.5
    hedge_min_delay_s: float = 0.05
    hedge_budget: float = 0.05
    min_chunk_bytes: int = 1 * MiB  # small objects are cut no finer than this
    stream_budget_bytes: int = 512 * MiB  # fetched-but-unconsumed bytes per stream
    cache_bytes: int = 2048 * MiB  # the epoch cache of fetched S3 ranges, shared by all streams; 0 turns it off
    cache_dir: Path | None = None  # the epoch cache's disk tier: what RAM evicts, kept across restarts
    cache_disk_bytes: int = 16 * 1024 * MiB  # the disk tier's budget, when cache_dir is set
    ring_bytes: int = 64 * MiB  # target size of one stream's ring
    # a bytes stream sizes its ring from the first-byte latency it measures (fetch/window.py): enough bytes in
    # flight to move its share of `target_bytes_per_s` (the host's, shared by the bytes streams open at once),
    # never more shared memory than `max_ring_bytes`
    target_bytes_per_s: int = 1500 * 1000 * 1000
    max_ring_bytes: int = 512 * MiB
    max_slots: int = 64
    decode_threads: int = 2
    decode_processes: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))  # image decode workers
    exit_when_idle_s: float | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    # /healthz, /metrics and /streams (observe/http.py); None: no HTTP side at all ("off" in flags and files)
    http_address: str | None = "127.0.0.1:9464"
    allowed_uids: tuple[int, ...] = ()  # besides the daemon's own uid
    # the only objects served when set: `s3://bucket/prefix/` or `/local/dir/` (file only, a list)
    allowed_prefixes: tuple[str, ...] = ()
    max_streams_per_client: int = 16  # open streams (connections) per client process
    max_ring_bytes_per_client: int = 4096 * MiB  # shared memory of one client process's rings together


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "KI": 1 << 10,
    "MI": 1 << 20,
    "GI": 1 << 30,
    "TI": 1 << 40,
}


def parse_bytes(value: str | int) -> int:
    """`8MiB`, `512M`, `1GiB` or a plain number of bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ConfigError(f"{value!r} is not a size; write e.g. 8MiB, 512MB or 1048576")
    unit = (match.group(2) or "").upper().removesuffix("B")
    return int(float(match.group(1)) * _UNITS[unit])


_TUNABLES: dict[str, Any] = {
    "max_concurrency": int,
    "chunk_bytes": parse_bytes,
    "fetch_path": str,
    "stall_timeout_s": float,
    "hedge": lambda value: _boolean(value),  # defined below
    "hedge_multiplier": float,
    "hedge_min_delay_s": float,
    "hedge_budget": float,
    "min_chunk_bytes": parse_bytes,
    "stream_budget_bytes": parse_bytes,
    "cache_bytes": parse_bytes,
    "cache_dir": lambda value: Path(value).expanduser(),
    "cache_disk_bytes": parse_bytes,
    "ring_bytes": parse_bytes,
    "target_bytes_per_s": parse_bytes,
    "max_ring_bytes": parse_bytes,
    "max_slots": int,
    "decode_threads": int,
    "decode_processes": int,
    "exit_when_idle_s": float,
    "log_level": str,
    "log_format": lambda value: str(value).strip().lower(),
    "http_address": lambda value: None if str(value).strip().lower() == "off" else str(value),
    "max_streams_per_client": int,
    "max_ring_bytes_per_client": parse_bytes,
}
_S3_KEYS = ("endpoint_url", "region", "addressing_style", "verify_ssl", "profile")


def _first(env: Mapping[str, str], names: tuple[str, ...], used: list[str]) -> str | None:
    """The first non-empty variable among `names`, remembering which one it was."""
    for name in names:
        value = env.get(name)
        if value:
            used.append(name)
            return value
    return None


def _boolean(value: object) -> bool:
    """true/false, 1/0, yes/no, on/off; anything else is refused rather than read as false."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("write true or false")


def _uids(value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError("write a list of user ids, e.g. [1001, 1002]")
    return tuple(int(uid) for uid in value)


def _prefixes(value: object) -> tuple[str, ...]:
    """`["s3://bucket/prefix/", "/data/"]`: an s3:// URL with a bucket, or an absolute local path."""
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise TypeError('write a list, e.g. ["s3://bucket/prefix/", "/data/"]')
    for prefix in value:
        if not (prefix.startswith("/") or re.match(r"^s3://[^/]+", prefix)):
            raise ValueError(f"{prefix!r} is neither s3://bucket[/prefix] nor an absolute path")
    # a bare bucket means all of it, not every bucket whose name starts with it
    return tuple(p + "/" if re.fullmatch(r"s3://[^/]+", p) else p for p in value)


def _converted(name: str, convert: Callable[[Any], Any], value: Any) -> Any:
    """`convert(value)`, or a ConfigError that names the setting."""
    try:
        return convert(value)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{name}: {value!r} is not valid ({exc})") from exc


def s3_settings_from(env: Mapping[str, str], overrides: Mapping[str, Any]) -> S3Settings:
    """S3 settings from flags/file (`overrides`) and the environment, MXNet's `S3_*` names first."""
    used: list[str] = []
    access_key = _first(env, ("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), used)
    secret_key = _first(env, ("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"), used)
    token = _first(env, ("S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"), used)
    if bool(access_key) != bool(secret_key):
        raise ConfigError("set both an access key id and a secret access key (S3_* or AWS_* names), or neither")
    region = overrides.get("region") or _first(env, ("S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"), used)
    endpoint = overrides.get("endpoint_url")
    dmlc_endpoint = False
    if not endpoint:
        endpoint = _first(env, ("S3_ENDPOINT",), used)
        dmlc_endpoint = endpoint is not None
        endpoint = endpoint or _first(env, ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), used)
    verify_ssl = overrides.get("verify_ssl")
    if verify_ssl is None:
        raw = _first(env, ("S3_VERIFY_SSL",), used)
        verify_ssl = True if raw is None else raw.strip() == "1"  # dmlc: unset or "1" verifies
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"  # dmlc-core's S3_ENDPOINT is a host name; it always speaks https
    style = overrides.get("addressing_style")
    if not style:
        is_aws = _first(env, ("S3_IS_AWS",), used)
        if is_aws is not None:
            style = "virtual" if is_aws.strip() == "1" else "path"
        else:
            # S3-compatible stores (MinIO, Ceph, moto) answer path-style requests; AWS answers both
            style = "path" if endpoint or dmlc_endpoint else "auto"
    profile = overrides.get("profile") or _first(env, ("AWS_PROFILE",), used)
    return S3Settings(
        endpoint_url=endpoint,
        region=region,
        addressing_style=style,
        verify_ssl=bool(verify_ssl),
        access_key_id=access_key,
        secret_access_key=secret_key,
        session_token=token,
        profile=profile,
        env_names_used=tuple(used),
    )


def load_config(flags: Mapping[str, Any], env: Mapping[str, str] | None = None, file: Path | None = None) -> Config:
    """Build the Config: `flags` holds only the options given on the command line (None = not given)."""
    env = os.environ if env is None else env
    given = {k: v for k, v in flags.items() if v is not None}
    from_file = _read_file(file or (Path(env["PREFETCHD_CONFIG"]) if env.get("PREFETCHD_CONFIG") else None))
    from_env = {
        name: env[f"PREFETCHD_{name.upper()}"]
        for name in (*_TUNABLES, *_S3_KEYS)
        if env.get(f"PREFETCHD_{name.upper()}")
    }
    merged: dict[str, Any] = {**from_file, **from_env, **given}
    values = {name: _converted(name, convert, merged[name]) for name, convert in _TUNABLES.items() if name in merged}
    s3_overrides = {k: merged[k] for k in _S3_KEYS if k in merged}
    if "verify_ssl" in s3_overrides:
        s3_overrides["verify_ssl"] = _converted("verify_ssl", _boolean, s3_overrides["verify_ssl"])
    s3 = s3_settings_from(env, s3_overrides)
    from_env_s3 = tuple(f"PREFETCHD_{k.upper()}" for k in _S3_KEYS if k in from_env and k not in given)
    s3 = replace(s3, env_names_used=from_env_s3 + s3.env_names_used)
    socket = _converted("socket_path", Path, merged.get("socket_path") or default_socket_path(env, os.getuid()))
    uids = _converted("allowed_uids", _uids, merged.get("allowed_uids") or ())
    prefixes = _converted("allowed_prefixes", _prefixes, merged.get("allowed_prefixes") or ())
    config = Config(socket_path=socket, s3=s3, allowed_uids=uids, allowed_prefixes=prefixes, **values)
    validate(config)
    return config


def _read_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    table = data.get("prefetchd", data)
    s3_table = table.get("s3", {})
    if not isinstance(s3_table, dict):
        raise ConfigError(f"config file {path}: s3 must be a table ([s3]) of {', '.join(_S3_KEYS)}")
    known = {f.name for f in fields(Config)} | set(_S3_KEYS)
    unknown = sorted(set(table) - known - {"s3"}) + [f"s3.{k}" for k in sorted(set(s3_table) - set(_S3_KEYS))]
    if unknown:
        raise ConfigError(f"config file {path}: unknown settings {unknown}")
    flat = {k: v for k, v in table.items() if k != "s3"}
    flat.update(s3_table)
    return flat


def _is_address(text: str | None) -> bool:
    from .observe.address import parse_address

    try:
        return text is None or bool(parse_address(text))
    except ValueError:
        return False


def validate(config: Config) -> None:
    checks = [
        (config.max_concurrency >= 1, "max_concurrency must be at least 1"),
        (config.min_chunk_bytes >= 4096, "min_chunk_bytes must be at least 4KiB"),
        (config.chunk_bytes >= config.min_chunk_bytes, "chunk_bytes must be at least min_chunk_bytes"),
        (config.stream_budget_bytes >= 2 * config.chunk_bytes, "stream_budget_bytes must hold two chunks"),
        (config.max_slots >= 2, "max_slots must be at least 2"),
        (config.target_bytes_per_s >= 1, "target_bytes_per_s must be at least 1"),
        (config.max_ring_bytes >= 1 * MiB, "max_ring_bytes must be at least 1MiB"),
        (config.cache_bytes >= 0, "cache_bytes must not be negative"),
        (config.cache_disk_bytes >= 0, "cache_disk_bytes must not be negative"),
        (config.decode_threads >= 1, "decode_threads must be at least 1"),
        (config.decode_processes >= 1, "decode_processes must be at least 1"),
        (config.exit_when_idle_s is None or config.exit_when_idle_s >= 0, "exit_when_idle_s must not be negative"),
        (config.max_streams_per_client >= 1, "max_streams_per_client must be at least 1"),
        (config.max_ring_bytes_per_client >= 1 * MiB, "max_ring_bytes_per_client must be at least 1MiB"),
        (config.log_level.upper() in LOG_LEVELS, f"log_level is one of {', '.join(LOG_LEVELS)}"),
        (config.log_format in LOG_FORMATS, f"log_format is one of {', '.join(LOG_FORMATS)}"),
        (_is_address(config.http_address), "http_address is HOST:PORT with an IP address (127.0.0.1:9464), or off"),
        (config.fetch_path in FETCH_PATHS, f"fetch_path is one of {', '.join(FETCH_PATHS)}"),
        (config.stall_timeout_s > 0, "stall_timeout_s must be more than 0"),
        (config.hedge_multiplier >= 1, "hedge_multiplier must be at least 1 (a hedge goes after its peers' p95)"),
        (config.hedge_min_delay_s >= 0, "hedge_min_delay_s must not be negative"),
        (0 <= config.hedge_budget <= 1, "hedge_budget is a share of requests, within [0, 1]"),
        (
            config.s3.addressing_style in ("auto", "path", "virtual"),
            "addressing_style is auto, path or virtual",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
