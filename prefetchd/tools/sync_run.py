"""`prefetchd sync`'s I/O around the pure plan (`sync.py`): walk the directory, list the prefix, hash, upload.

Hashing reads each file once, in worker threads (hashlib lets go of the GIL), for both checksums the plan
compares; the listing gives every object's size and ETag in one request per 1,000 keys, and only a file whose
ETag differs from a same-sized object's costs a HEAD.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prefetchd_client.errors import InvalidRequest, ObjectChanged, ObjectNotFound

from ..config import Config
from ..fetch.s3 import S3Source
from .progress import Advance, ProgressBar
from .sync import (
    SHA256_METADATA,
    Destination,
    LocalFile,
    RemoteObject,
    SyncPlan,
    part_ranges,
    plan_sync,
    uses_multipart,
)
from .upload import Uploader, first_error

log = logging.getLogger("prefetchd.tools.sync")

READ_BYTES = 1 << 20  # hashing reads a file this much at a time
HASH_THREADS = 4  # files hashed at once: enough to keep a disk busy, few enough for two cores


@dataclass(frozen=True, slots=True)
class Found:
    """A regular file under the directory."""

    relative: PurePosixPath
    path: Path
    size: int


async def sync_to_s3(
    directory: Path,
    destination: Destination,
    config: Config,
    *,
    part_bytes: int,
    max_in_flight: int,
    dry_run: bool,
    bar: ProgressBar,
) -> SyncPlan:
    """`sync_directory` through an S3 client of its own: the daemon's S3 settings and retry policy."""
    source = S3Source(config.s3, max_connections=max_in_flight, lean=False, stall_timeout_s=config.stall_timeout_s)
    async with source:
        return await sync_directory(
            directory, destination, source, part_bytes=part_bytes, max_in_flight=max_in_flight, dry_run=dry_run, bar=bar
        )


async def sync_directory(
    directory: Path,
    destination: Destination,
    source: S3Source,
    *,
    part_bytes: int,
    max_in_flight: int,
    dry_run: bool,
    bar: ProgressBar,
) -> SyncPlan:
    """Upload what the plan says (nothing with `dry_run`) and return the plan."""
    found = await asyncio.to_thread(find_files, directory)
    keys = [destination.key_for(item.relative) for item in found]
    try:
        remote = await list_prefix(source, destination)
    except ObjectNotFound as exc:  # no such bucket: the argument names nothing
        raise InvalidRequest(str(exc), url=destination.url) from exc
    files = await digest_files(found, keys, part_bytes, bar)
    plan = plan_sync(files, remote)
    if plan.unsure:
        checked = await read_metadata(source, destination, plan.unsure, max_in_flight)
        remote.update({key: head for key, head in checked.items() if head is not None})
        for gone in [key for key, head in checked.items() if head is None]:
            del remote[gone]
        plan = plan_sync(files, remote)
    if not dry_run and plan.uploads:
        await upload_all(source, destination, plan, max_in_flight, bar)
    return plan


def find_files(directory: Path) -> list[Found]:
    """Every regular file under `directory`, links to files included; linked directories are not entered."""
    found: list[Found] = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = Path(root, name)
            try:
                st = path.stat()
            except OSError as exc:
                log.warning("skipping %s: %s", path, exc.strerror)
                continue
            if not path.is_file():
                log.warning("skipping %s: not a regular file", path)
                continue
            found.append(Found(PurePosixPath(path.relative_to(directory).as_posix()), path, st.st_size))
    return found


async def list_prefix(source: S3Source, destination: Destination) -> dict[str, RemoteObject]:
    """Every object under the prefix, with its size and ETag."""
    remote: dict[str, RemoteObject] = {}
    params = {"Bucket": destination.bucket, "Prefix": destination.prefix}
    while True:
        page = await source.request(destination.url, "list_objects_v2", **params)
        for item in page.get("Contents", []):
            remote[item["Key"]] = RemoteObject(item["Key"], int(item["Size"]), str(item["ETag"]))
        if not page.get("IsTruncated"):
            return remote
        params["ContinuationToken"] = page["NextContinuationToken"]


async def digest_files(
    found: Sequence[Found], keys: Sequence[str], part_bytes: int, bar: ProgressBar
) -> list[LocalFile]:
    loop = asyncio.get_running_loop()
    threads = asyncio.Semaphore(HASH_THREADS)
    with bar("hashing", sum(item.size for item in found)) as advance:

        def advance_from_thread(n: int) -> None:
            loop.call_soon_threadsafe(advance, n)

        async def digest(item: Found, key: str) -> LocalFile:
            async with threads:
                return await asyncio.to_thread(digest_file, item, key, part_bytes, advance_from_thread)

        return list(await asyncio.gather(*(digest(item, key) for item, key in zip(found, keys, strict=True))))


def digest_file(item: Found, key: str, part_bytes: int, advance: Advance = lambda n: None) -> LocalFile:
    """The MD5 of each part the file would be uploaded in (of the whole file below the threshold) and its SHA-256."""
    ranges = part_ranges(item.size, part_bytes) if uses_multipart(item.size, part_bytes) else [(0, item.size)]
    sha256 = hashlib.sha256()
    md5s: list[bytes] = []
    with open(item.path, "rb") as f:
        for _, length in ranges:
            md5 = hashlib.md5()
            left = length
            while left:
                chunk = f.read(min(READ_BYTES, left))
                if not chunk:
                    raise ObjectChanged(
                        f"{item.path} shrank while sync read it (it had {item.size} bytes); run sync again once it "
                        "is written",
                        url=str(item.path),
                        offset=item.size - left,
                    )
                md5.update(chunk)
                sha256.update(chunk)
                left -= len(chunk)
                advance(len(chunk))
            md5s.append(md5.digest())
    return LocalFile(key, item.path, item.size, part_bytes, tuple(md5s), sha256.hexdigest())


async def read_metadata(
    source: S3Source, destination: Destination, files: Sequence[LocalFile], max_in_flight: int
) -> dict[str, RemoteObject | None]:
    """The objects of `files` as a HEAD gives them: size, ETag, and the SHA-256 our uploads store in metadata.

    None for an object deleted since the listing.
    """
    slots = asyncio.Semaphore(max_in_flight)

    async def head(key: str) -> RemoteObject | None:
        async with slots:
            try:
                answer = await source.request(
                    f"s3://{destination.bucket}/{key}", "head_object", Bucket=destination.bucket, Key=key
                )
            except ObjectNotFound:
                return None
        sha256 = answer.get("Metadata", {}).get(SHA256_METADATA)
        return RemoteObject(key, int(answer["ContentLength"]), str(answer["ETag"]), sha256, metadata_read=True)

    heads = await asyncio.gather(*(head(file.key) for file in files))
    return {file.key: remote for file, remote in zip(files, heads, strict=True)}


async def upload_all(
    source: S3Source, destination: Destination, plan: SyncPlan, max_in_flight: int, bar: ProgressBar
) -> None:
    """The plan's uploads, `max_in_flight` files and parts at a time; the first failure stops the rest."""
    with bar("uploading", plan.upload_bytes) as advance:
        uploader = Uploader(source, destination.bucket, max_in_flight=max_in_flight, advance=advance)
        files = asyncio.Semaphore(max_in_flight)

        def release(_: object) -> None:
            files.release()

        try:
            async with asyncio.TaskGroup() as group:
                for upload in plan.uploads:
                    await files.acquire()
                    group.create_task(uploader.upload(upload.file)).add_done_callback(release)
        except BaseExceptionGroup as errors:
            error = first_error(errors)
            raise error from error.__cause__
