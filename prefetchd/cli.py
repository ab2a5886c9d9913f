"""The `prefetchd` command. Builds the Config, configures logging, maps errors to exit codes.

Exit codes: 0 done, 1 a runtime failure (the message says what), 2 bad arguments or configuration.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Config, ConfigError, load_config

log = logging.getLogger("prefetchd")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="prefetchd")
def main() -> None:
    """prefetchd: fetch S3 byte ranges concurrently, decode them, and hand ready batches to trainers
    through shared memory."""


@main.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Control socket path [default: $PREFETCHD_SOCKET, else a per-user runtime directory]",
)
@click.option(
    "--endpoint-url",
    help="S3-compatible endpoint, e.g. http://minio:9000 [env: S3_ENDPOINT, AWS_ENDPOINT_URL_S3]",
)
@click.option("--region", help="AWS region [env: S3_REGION, AWS_REGION]")
@click.option(
    "--addressing-style",
    type=click.Choice(["auto", "path", "virtual"]),
    help="S3 addressing [default: path with a custom endpoint, else auto]",
)
@click.option(
    "--concurrency",
    "max_concurrency",
    type=click.IntRange(min=1),
    help="Ranged GETs in flight per stream [default: 32]",
)
@click.option("--chunk-size", "chunk_bytes", help="Largest byte range per GET, e.g. 8MiB [default: 8MiB]")
@click.option(
    "--fetch-path",
    type=click.Choice(["lean", "botocore"]),
    help="How bulk bytes are read: lean ranged GETs straight into memory, or aiobotocore's [default: lean]",
)
@click.option(
    "--stall-timeout",
    "stall_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds without a byte before a GET is dropped and made again on a new connection [default: 10]",
)
@click.option(
    "--hedge/--no-hedge",
    default=None,
    help="Race a GET that runs far behind its peers with a second request for its missing bytes [default: on]",
)
@click.option(
    "--hedge-multiplier",
    type=click.FloatRange(min=1),
    help="Hedge a GET once it has run this many times its peers' p95 time [default: 1.5]",
)
@click.option(
    "--hedge-min-delay",
    "hedge_min_delay_s",
    type=click.FloatRange(min=0),
    help="Seconds a GET runs at least before it is hedged [default: 0.05]",
)
@click.option(
    "--hedge-budget",
    type=click.FloatRange(min=0, max=1),
    help="Most hedges per completed GET, over time: the extra requests hedging may add [default: 0.05]",
)
@click.option(
    "--budget",
    "stream_budget_bytes",
    help="Fetched-but-unconsumed bytes per stream, e.g. 512MiB [default: 512MiB]",
)
@click.option("--ring-size", "ring_bytes", help="Target shared memory per decoded stream [default: 64MiB]")
@click.option(
    "--http",
    "http_address",
    help="Where /healthz, /metrics (Prometheus) and /streams listen, HOST:PORT, or off [default: 127.0.0.1:9464]",
)
@click.option(
    "--max-ring-size",
    "max_ring_bytes",
    help="Most shared memory a bytes stream sizes its ring to, from the latency it measures [default: 512MiB]",
)
@click.option(
    "--target-rate",
    "target_bytes_per_s",
    help="Bytes per second the bytes streams open at once keep enough in flight for, e.g. 1.5GB [default: 1.5GB]",
)
@click.option(
    "--cache-size",
    "cache_bytes",
    help="RAM for the epoch cache of S3 ranges, shared by all streams; 0 turns it off [default: 2GiB]",
)
@click.option(
    "--cache-dir",
    help="Directory for the epoch cache's disk tier: ranges RAM evicts, kept across restarts [default: none]",
)
@click.option(
    "--cache-disk-size",
    "cache_disk_bytes",
    help="Disk for the epoch cache under --cache-dir, least recently used out first [default: 16GiB]",
)
@click.option("--decode-threads", type=click.IntRange(min=1), help="Threads for large decodes [default: 2]")
@click.option(
    "--decode-processes",
    type=click.IntRange(min=1),
    help="Worker processes that decode images (RecordIO) [default: the cores this process may use]",
)
@click.option(
    "--exit-when-idle",
    "exit_when_idle_s",
    type=click.FloatRange(min=0),
    help="Exit after this many seconds without clients [default: never]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file with these settings (flags > PREFETCHD_* env > file > defaults)",
)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="Log lines as text, or as one JSON object each (time, level, logger, message, stream) [default: text]",
)
@click.option("--ready-fd", type=int, hidden=True, help="Write 'ready' to this fd once listening")
@click.option("--detach", is_flag=True, hidden=True, help="Fork into the background first (autostart)")
def serve(config_file: Path | None, ready_fd: int | None, detach: bool, **flags: Any) -> None:
    """Run the daemon in the foreground until SIGTERM or Ctrl-C."""
    try:
        config = load_config(flags, None, config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if detach:
        _detach()
    from .redaction import Redactor, configure_logging

    configure_logging(config.log_level, Redactor.for_settings(config.s3), config.log_format)
    sys.exit(_run_daemon(config, ready_fd))


def _detach() -> None:
    """Fork; the parent returns to its caller at once, the child leads a new session."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def _run_daemon(config: Config, ready_fd: int | None) -> int:
    import uvloop

    from .daemon import Daemon, capture_signals
    from .serve.listener import DaemonBusy

    pending = [ready_fd] if ready_fd is not None else []

    def tell(word: str) -> None:
        """Tell whoever started us (autostart) how start-up went, once."""
        while pending:
            fd = pending.pop()
            try:
                http = f" http={daemon.http_url}" if daemon.http_url else ""
                os.write(fd, f"{word} pid={os.getpid()} socket={config.socket_path}{http}\n".encode())
            finally:
                os.close(fd)

    daemon = Daemon(config, on_ready=lambda: tell("ready"))

    async def run() -> None:
        with capture_signals(daemon):
            await daemon.serve()

    try:
        uvloop.run(run())
    except DaemonBusy as exc:
        log.error("%s", exc)
        tell("busy")
        return 1
    except Exception as exc:  # start-up failures: a clear line, not a traceback
        from prefetchd_client.errors import PrefetchdError

        if not isinstance(exc, PrefetchdError):
            raise
        log.error("%s", exc)
        tell("failed")
        return 1
    return 0


@main.command()
def demo() -> None:
    """Embedded S3 + Fashion-MNIST + daemon + one epoch of MXNet training from s3:// (needs mxnet, moto)."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    from .testing.demo import run_demo

    run_demo(lambda line: click.echo(line))


@main.command()
@click.option("--rounds", type=click.IntRange(min=1), default=5, help="Timed epochs per reader")
@click.option("--batch-size", type=click.IntRange(min=1), default=100)
@click.option(
    "--only",
    type=click.Choice(["mnist", "images", "training", "bytes", "fetch-path", "clients", "memory", "cache", "hedging"]),
    help="Run one benchmark [default: all]",
)
@click.option("--megabytes", type=click.IntRange(min=1), default=1000, help="Size of the JPEG RecordIO dataset")
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    multiple=True,
    default=[30.0],
    help="First-byte latency of the modelled network; repeat it to measure several (bytes)",
)
@click.option(
    "--mbps", type=click.FloatRange(min=1), default=90.0, help="Pace of one connection, MB/s (bytes, clients, memory)"
)
@click.option(
    "--hedging-megabytes",
    type=click.IntRange(min=1),
    default=1000,
    help="Size of the object read in the hedging benchmark (about 3 requests in 1% each epoch)",
)
@click.option(
    "--write-docs/--no-write-docs",
    default=True,
    help="Rewrite the generated sections of docs/benchmarks.md and its plot (bytes, hedging)",
)
def bench(
    rounds: int,
    batch_size: int,
    only: str | None,
    megabytes: int,
    latency_ms: tuple[float, ...],
    mbps: float,
    hedging_megabytes: int,
    write_docs: bool,
) -> None:
    """Side-by-side throughput: prefetchd (local files, and S3) against MXNet's own iterators and S3 readers."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    say = click.echo
    if only in (None, "mnist"):
        from .bench.epoch import run

        run(rounds=rounds, batch_size=batch_size, say=say)
    if only in (None, "images"):
        from .bench.images import run as run_images

        run_images(rounds=min(rounds, 3), megabytes=megabytes, batch_size=batch_size, say=say)
    if only in (None, "bytes"):
        from .bench.bytes import run as run_bytes

        run_bytes(
            rounds=min(rounds, 3),
            megabytes=megabytes,
            latencies_ms=latency_ms,
            megabytes_per_s=mbps,
            say=say,
            write_docs=write_docs,
        )
    if only in (None, "fetch-path"):
        from .bench.fetch_path import run as run_fetch_path

        run_fetch_path(
            rounds=min(rounds, 3), megabytes=megabytes, latency_ms=latency_ms[0], megabytes_per_s=mbps, say=say
        )
    if only in (None, "clients"):
        from .bench.clients import run as run_clients

        run_clients(rounds=min(rounds, 3), megabytes=megabytes, latency_ms=latency_ms[0], megabytes_per_s=mbps, say=say)
    if only in (None, "memory"):
        from .bench.memory import run as run_memory

        run_memory(megabytes=megabytes, latency_ms=latency_ms[0], megabytes_per_s=mbps, say=say)
    if only in (None, "cache"):
        from .bench.cache import run as run_cache

        run_cache(rounds=min(rounds, 3), megabytes=megabytes, latency_ms=latency_ms[0], megabytes_per_s=mbps, say=say)
    if only in (None, "hedging"):
        from .bench.hedging import run as run_hedging

        run_hedging(
            rounds=rounds,
            megabytes=hedging_megabytes,
            latency_ms=latency_ms[0],
            megabytes_per_s=mbps,
            say=say,
            write_docs=write_docs,
        )
    if only in (None, "training"):
        from .bench.training import run as run_training

        run_training(rounds=rounds, say=say)


# `inspect` and `sync` reach S3 themselves, with the daemon's settings (flags > env > --config file > defaults)


def _tool_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--endpoint-url", help="S3-compatible endpoint [env: S3_ENDPOINT, AWS_ENDPOINT_URL_S3]"),
            click.option("--region", help="AWS region [env: S3_REGION, AWS_REGION]"),
            click.option(
                "--config",
                "config_file",
                type=click.Path(path_type=Path, dir_okay=False),
                help="The daemon's TOML file, for its S3 and fetch settings",
            ),
            click.option("--no-progress", is_flag=True, help="No progress bar on stderr"),
        ]
    ):
        command = option(command)
    return command


def _tool_config(flags: dict[str, Any], config_file: Path | None) -> Config:
    try:
        return load_config(flags, None, config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _run_tool(coroutine: Any, param_hint: str) -> Any:
    """Run a command's coroutine: a URL that names nothing usable exits 2, a failure (corrupt data, S3) exits 1."""
    import asyncio

    from prefetchd_client.errors import InvalidRequest, PrefetchdError

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    try:
        return asyncio.run(coroutine)
    except InvalidRequest as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from exc
    except PrefetchdError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("inspect")
@click.argument("url")
@click.option(
    "--label-width",
    type=click.IntRange(min=1),
    default=1,
    help="Labels of each RecordIO record the histogram counts, as ImageRecordIter's label_width",
)
@click.option(
    "--concurrency", "max_concurrency", type=click.IntRange(min=1), help="Ranged GETs in flight [default: 32]"
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object")
@_tool_options
def inspect_command(
    url: str, label_width: int, as_json: bool, no_progress: bool, config_file: Path | None, **flags: Any
) -> None:
    """Check an IDX or RecordIO object (s3://bucket/key or a path) and summarise it.

    IDX: magic, type, dims, records, bytes, and a label file's histogram. RecordIO (.rec, with the .idx beside
    it): records, label histogram, and an integrity check of every record's framing and of the index.

    Exit codes: 0 intact, 1 corrupt (the message names the object and byte offset) or unreadable, 2 bad arguments.
    """
    import json

    from .tools.inspect_run import inspect_url
    from .tools.progress import bytes_bar, no_bar

    config = _tool_config(flags, config_file)
    bar = no_bar if no_progress else bytes_bar
    summary = _run_tool(inspect_url(url, config, label_width=label_width, bar=bar), "URL")
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else "\n".join(summary.lines()))


@main.command("sync")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("destination")
@click.option("--dry-run", is_flag=True, help="Print what would be uploaded, and upload nothing")
@click.option(
    "--part-size",
    default="8MiB",
    help="Files this size or larger go up in parts of this size (5MiB-5GiB); 8MiB is aws-cli's, so its ETags match",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=8,
    help="Files and parts sent at once (each holds one part in memory)",
)
@_tool_options
def sync_command(
    directory: Path,
    destination: str,
    dry_run: bool,
    part_size: str,
    concurrency: int,
    no_progress: bool,
    config_file: Path | None,
    **flags: Any,
) -> None:
    """Upload every file under DIRECTORY to DESTINATION (s3://bucket/prefix/), as `aws s3 sync` does.

    Files whose object already has the same size and checksum (S3's ETag, else the SHA-256 stored in the object's
    metadata) are skipped, so a second run uploads nothing. Big files go up in parts, concurrently; an upload that
    fails or is interrupted is aborted and leaves no partial object. Nothing is ever deleted.
    """
    from prefetchd_client.errors import InvalidRequest

    from .config import parse_bytes
    from .tools.progress import bytes_bar, no_bar
    from .tools.sync import MAX_PART_BYTES, MIN_PART_BYTES, parse_destination
    from .tools.sync_run import sync_to_s3

    try:
        part_bytes = parse_bytes(part_size)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--part-size") from exc
    if not MIN_PART_BYTES <= part_bytes <= MAX_PART_BYTES:
        raise click.BadParameter(f"{part_size} is outside S3's part sizes, 5MiB to 5GiB", param_hint="--part-size")
    try:
        target = parse_destination(destination)
    except InvalidRequest as exc:
        raise click.BadParameter(str(exc), param_hint="DESTINATION") from exc
    config = _tool_config(flags, config_file)
    bar = no_bar if no_progress else bytes_bar
    plan = _run_tool(
        sync_to_s3(
            directory, target, config, part_bytes=part_bytes, max_in_flight=concurrency, dry_run=dry_run, bar=bar
        ),
        "DESTINATION",
    )
    verb = "would upload" if dry_run else "uploaded"
    for upload in plan.uploads:
        click.echo(f"{verb}: {upload.file.path} to s3://{target.bucket}/{upload.file.key} ({upload.reason.value})")
    files = len(plan.uploads)
    click.echo(
        f"{'dry run: ' if dry_run else ''}{verb} {files} file{'s' * (files != 1)} / {plan.upload_bytes:,} bytes, "
        f"skipped {len(plan.skipped)} already in {target.url}"
    )


@main.command("status")
@click.option(
    "--http",
    "http_url",
    help="The daemon's HTTP side, http://HOST:PORT [default: its http_address, from --config, env or 127.0.0.1:9464]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The daemon's TOML file, for its http_address",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.05),
    default=2.0,
    help="Seconds between readings; the rates are over this interval",
)
@click.option("--once", is_flag=True, help="Print one table (rates over one --interval) and exit")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's /streams JSON once and exit")
def status_command(
    http_url: str | None, config_file: Path | None, interval_s: float, once: bool, as_json: bool
) -> None:
    """A live table of the daemon's streams (batches/s, MB/s, ring, the trainer's stall) and its S3 and cache.

    Exit codes: 0 done (or Ctrl-C), 1 no daemon answers at the address, 2 bad arguments.
    """
    import json

    from prefetchd_client.errors import DaemonUnavailable

    from .tools.status import status_url
    from .tools.status_run import read_streams, watch

    address = http_url
    if address is None:
        address = _tool_config({}, config_file).http_address
        if address is None:
            raise click.UsageError("the daemon's HTTP side is off (http_address = off): pass --http URL")
    try:
        url = status_url(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--http") from exc
    try:
        if as_json:
            click.echo(json.dumps(read_streams(url), indent=2))
        else:
            watch(url, interval_s, once=once, say=click.echo)
    except DaemonUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
