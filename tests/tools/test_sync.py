"""`prefetchd sync`: the pure plan (prefetchd/tools/sync.py), uploads that never leave a partial object, and the
command end to end against moto's S3 server, whose request log shows what each run sent."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest

from prefetchd.config import load_config
from prefetchd.fetch.s3 import S3Source
from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.tools.sync import (
    MAX_PARTS,
    Destination,
    LocalFile,
    MiB,
    Reason,
    RemoteObject,
    normal_etag,
    parse_destination,
    part_bytes_for,
    part_ranges,
    plan_sync,
    s3_etag,
)
from prefetchd.tools.sync_run import Found, digest_file
from prefetchd.tools.upload import Uploader
from prefetchd_client.errors import InvalidRequest, ObjectChanged
from tests.helpers import requests_for
from tests.tools.cli import run_prefetchd

BUCKET = "prefetchd-sync-tests"
PART = 5 * MiB  # the smallest part S3 takes, so that a three-part file stays small


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def local(key: str, data: bytes, part_bytes: int = PART) -> LocalFile:
    """The digests of `data` as `digest_file` takes them, without a file."""
    if data and len(data) >= part_bytes:
        md5s = tuple(hashlib.md5(data[s : s + n]).digest() for s, n in part_ranges(len(data), part_bytes))
    else:
        md5s = (hashlib.md5(data).digest(),)
    return LocalFile(key, Path(key), len(data), part_bytes, md5s, hashlib.sha256(data).hexdigest())


# the pure plan


def test_the_etag_is_the_md5_below_the_threshold_and_the_md5_of_part_md5s_from_it() -> None:
    small, exact, big = b"x" * 100, bytes(PART), bytes(2 * PART + 1)

    assert local("small", small).etag == hashlib.md5(small).hexdigest()
    assert local("empty", b"").etag == "d41d8cd98f00b204e9800998ecf8427e"
    # a file of exactly one part goes up as a one-part multipart upload, as aws-cli sends it
    assert local("exact", exact).etag == hashlib.md5(hashlib.md5(exact).digest()).hexdigest() + "-1"
    parts = [hashlib.md5(big[:PART]).digest(), hashlib.md5(big[PART : 2 * PART]).digest(), hashlib.md5(b"\0").digest()]
    assert local("big", big).etag == hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    assert s3_etag(parts, multipart=True) == local("big", big).etag


def test_the_part_size_doubles_until_the_file_fits_in_10000_parts() -> None:
    assert part_bytes_for(MAX_PARTS * 8 * MiB, 8 * MiB) == 8 * MiB
    assert part_bytes_for(MAX_PARTS * 8 * MiB + 1, 8 * MiB) == 16 * MiB
    size = MAX_PARTS * 8 * MiB + 12345
    ranges = part_ranges(size, 8 * MiB)
    assert len(ranges) <= MAX_PARTS and sum(n for _, n in ranges) == size
    assert all(start == i * 16 * MiB for i, (start, _) in enumerate(ranges))


def test_new_and_resized_files_are_uploaded_and_matching_etags_skipped_without_a_request() -> None:
    same, resized, new = local("p/same", b"a" * 10), local("p/resized", b"b" * 10), local("p/new", b"c")
    remote = {
        "p/same": RemoteObject("p/same", 10, f'"{same.etag}"'),  # as listings quote it
        "p/resized": RemoteObject("p/resized", 11, '"0123"'),
        "p/only-remote": RemoteObject("p/only-remote", 5, '"4567"'),  # never deleted, never mentioned
    }

    plan = plan_sync([same, resized, new], remote)

    assert [(u.file.key, u.reason) for u in plan.uploads] == [("p/new", Reason.NEW), ("p/resized", Reason.SIZE)]
    assert (plan.skipped, plan.unsure) == ((same,), ())
    assert (plan.upload_bytes, plan.skipped_bytes) == (11, 10)


def test_a_same_sized_object_with_another_etag_is_decided_by_its_sha256_metadata() -> None:
    kms, other_tool, changed = local("kms", b"k" * 8), local("other", b"o" * 8), local("changed", b"n" * 8)
    listing = {file.key: RemoteObject(file.key, 8, '"not-an-md5"') for file in (kms, other_tool, changed)}

    first = plan_sync([kms, other_tool, changed], listing)
    assert (first.uploads, first.unsure) == ((), (changed, kms, other_tool))

    heads = {
        "kms": RemoteObject("kms", 8, '"not-an-md5"', kms.sha256, metadata_read=True),
        "other": RemoteObject("other", 8, '"not-an-md5"', None, metadata_read=True),
        "changed": RemoteObject("changed", 8, '"not-an-md5"', local("x", b"m" * 8).sha256, metadata_read=True),
    }
    second = plan_sync([kms, other_tool, changed], heads)
    assert [(u.file.key, u.reason) for u in second.uploads] == [("changed", Reason.CONTENT), ("other", Reason.CONTENT)]
    assert (second.skipped, second.unsure) == ((kms,), ())


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://bucket-name", "bucket-name", ""),
        ("s3://bucket-name/", "bucket-name", ""),
        ("s3://bucket-name/training-data", "bucket-name", "training-data/"),
        ("s3://bucket-name/training-data/mnist/", "bucket-name", "training-data/mnist/"),
    ],
)
def test_the_destination_prefix_is_a_folder(url: str, bucket: str, prefix: str) -> None:
    assert parse_destination(url) == Destination(bucket, prefix)


@pytest.mark.parametrize("url", ["http://bucket-name/p/", "s3:///p/", "bucket-name/p", "s3://bucket-name/p?x=1"])
def test_a_destination_that_is_not_an_s3_prefix_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequest, match="s3://bucket/prefix/"):
        parse_destination(url)


def test_keys_are_the_relative_paths_under_the_prefix_within_s3s_limit() -> None:
    destination = Destination("bucket-name", "data/")

    assert destination.key_for(PurePosixPath("a/b c/é.txt")) == "data/a/b c/é.txt"
    with pytest.raises(InvalidRequest, match="1024-byte key limit"):
        destination.key_for(PurePosixPath("x" * 1020))
    assert normal_etag('W/"ABC-2"') == "abc-2"


def test_digest_file_reads_what_the_plan_compares(tmp_path: Path) -> None:
    data = random_bytes(2 * PART + 7)
    (tmp_path / "f").write_bytes(data)
    seen: list[int] = []

    digest = digest_file(Found(PurePosixPath("f"), tmp_path / "f", len(data)), "p/f", PART, seen.append)

    assert digest == dataclasses.replace(local("p/f", data), path=tmp_path / "f")
    assert sum(seen) == len(data)


# uploads through the real S3 client


@pytest.fixture(scope="module")
def bucket(s3_server: EmbeddedS3) -> str:
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def prefix() -> str:
    return f"sync-{uuid.uuid4().hex[:10]}"


def no_trace(s3_server: EmbeddedS3, key: str) -> None:
    """Neither an object nor an unfinished multipart upload at `key`."""
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount") == 0


def upload(s3_server: EmbeddedS3, file: LocalFile, *, cancel_after_first_part: bool = False) -> None:
    config = load_config({}, s3_server.environment())

    async def scenario() -> None:
        async with S3Source(config.s3, max_connections=2, lean=False) as source:
            running: list[asyncio.Task[None]] = []

            def advance(n: int) -> None:
                if cancel_after_first_part:
                    running[0].cancel()  # as Ctrl-C does: the main task is cancelled

            uploader = Uploader(source, BUCKET, max_in_flight=1, advance=advance)
            running.append(asyncio.create_task(uploader.upload(file)))
            await running[0]

    asyncio.run(scenario())


def test_an_interrupted_multipart_upload_is_aborted_and_leaves_nothing(
    s3_server: EmbeddedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = random_bytes(3 * PART)
    (tmp_path / "big").write_bytes(data)
    file = digest_file(Found(PurePosixPath("big"), tmp_path / "big", len(data)), f"{prefix}/big", PART)

    with pytest.raises(asyncio.CancelledError):
        upload(s3_server, file, cancel_after_first_part=True)

    assert requests_for(s3_server, f"{prefix}/big?uploadId", "PUT") == 1  # one part of three went up
    assert requests_for(s3_server, f"{prefix}/big?uploadId", "DELETE") == 1  # AbortMultipartUpload
    no_trace(s3_server, f"{prefix}/big")


def test_a_file_that_changed_since_it_was_hashed_fails_and_leaves_nothing(
    s3_server: EmbeddedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = random_bytes(3 * PART)
    path = tmp_path / "big"
    path.write_bytes(data)
    file = digest_file(Found(PurePosixPath("big"), path, len(data)), f"{prefix}/big", PART)
    with open(path, "r+b") as f:
        f.seek(2 * PART + 10)
        f.write(bytes([data[2 * PART + 10] ^ 0xFF]))  # the third part changes, its size does not

    with pytest.raises(ObjectChanged) as caught:
        upload(s3_server, file)

    assert caught.value.offset == 2 * PART
    assert f"{path} changed while sync ran (bytes {2 * PART}-{3 * PART - 1} differ" in str(caught.value)
    no_trace(s3_server, f"{prefix}/big")


# the command


def write_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"first version\n",
        "empty": b"",
        "sub/dir/b.bin": random_bytes(1000, seed=1),
        "sub/big.bin": random_bytes(2 * PART + 3, seed=2),  # three parts
        "name with spaces é.txt": b"unicode keys\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def counts(s3_server: EmbeddedS3, prefix: str) -> dict[str, int]:
    return {method: requests_for(s3_server, f"/{BUCKET}/{prefix}/", method) for method in ("PUT", "POST", "HEAD")}


def sync(s3_server: EmbeddedS3, directory: Path, prefix: str, *args: str) -> list[str]:
    result = run_prefetchd(s3_server, "sync", str(directory), f"s3://{BUCKET}/{prefix}/", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture
def synced(s3_server: EmbeddedS3, bucket: str, prefix: str, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A tree synced once with 5 MiB parts."""
    files = write_tree(tmp_path)
    result = run_prefetchd(s3_server, "sync", str(tmp_path), f"s3://{BUCKET}/{prefix}", "--part-size", "5MiB")
    assert result.returncode == 0, result.stderr
    total = sum(map(len, files.values()))
    assert (
        result.stdout.splitlines()[-1]
        == f"uploaded 5 files / {total:,} bytes, skipped 0 already in s3://{BUCKET}/{prefix}/"
    )
    assert "hashing: 100%" in result.stderr and "uploading: 100%" in result.stderr  # the bars, on stderr
    return tmp_path, files


def test_sync_uploads_a_tree_byte_for_byte_and_a_second_run_uploads_nothing(
    s3_server: EmbeddedS3, prefix: str, synced: tuple[Path, dict[str, bytes]]
) -> None:
    directory, files = synced
    first = counts(s3_server, prefix)
    assert first == {"PUT": 4 + 3, "POST": 2, "HEAD": 0}  # 4 small objects, 3 parts; create and complete
    client = s3_server.client()
    for name, data in files.items():
        assert client.get_object(Bucket=BUCKET, Key=f"{prefix}/{name}")["Body"].read() == data, name
    big = client.head_object(Bucket=BUCKET, Key=f"{prefix}/sub/big.bin")
    expected = digest_file(Found(PurePosixPath("b"), directory / "sub/big.bin", 2 * PART + 3), "k", PART)
    assert normal_etag(big["ETag"]) == expected.etag and expected.etag.endswith("-3")  # multipart, as we compute it
    assert big["Metadata"] == {"sha256": hashlib.sha256(files["sub/big.bin"]).hexdigest()}
    first = counts(s3_server, prefix)  # and the HEAD just made

    lines = sync(s3_server, directory, prefix, "--part-size", "5MiB")

    assert lines == [f"uploaded 0 files / 0 bytes, skipped 5 already in s3://{BUCKET}/{prefix}/"]
    assert counts(s3_server, prefix) == first  # the listing's ETags decided: not even a HEAD


def test_changing_one_file_uploads_only_it(
    s3_server: EmbeddedS3, prefix: str, synced: tuple[Path, dict[str, bytes]]
) -> None:
    directory, _ = synced
    (directory / "a.txt").write_bytes(b"the second version\n")  # a new size
    (directory / "sub/dir/b.bin").write_bytes(random_bytes(1000, seed=3))  # the same size
    before = counts(s3_server, prefix)

    lines = sync(s3_server, directory, prefix, "--part-size", "5MiB")

    assert lines == [
        f"uploaded: {directory / 'a.txt'} to s3://{BUCKET}/{prefix}/a.txt (size differs)",
        f"uploaded: {directory / 'sub/dir/b.bin'} to s3://{BUCKET}/{prefix}/sub/dir/b.bin (checksum differs)",
        f"uploaded 2 files / 1,019 bytes, skipped 3 already in s3://{BUCKET}/{prefix}/",
    ]
    after = counts(s3_server, prefix)
    assert {k: after[k] - before[k] for k in after} == {"PUT": 2, "POST": 0, "HEAD": 1}
    assert s3_server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/a.txt")["Body"].read() == b"the second version\n"


def test_dry_run_lists_the_uploads_and_sends_none(
    s3_server: EmbeddedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    files = write_tree(tmp_path)

    lines = sync(s3_server, tmp_path, prefix, "--dry-run", "--no-progress")

    assert len(lines) == 6 and all(line.startswith("would upload: ") and line.endswith(" (new)") for line in lines[:5])
    total = sum(map(len, files.values()))
    assert lines[-1] == f"dry run: would upload 5 files / {total:,} bytes, skipped 0 already in s3://{BUCKET}/{prefix}/"
    assert counts(s3_server, prefix) == {"PUT": 0, "POST": 0, "HEAD": 0}
    no_trace(s3_server, f"{prefix}/")


def put_in_parts(client: Any, key: str, data: bytes, part_bytes: int, metadata: dict[str, str]) -> None:
    """An upload by another tool, with other parts than ours (and perhaps our metadata)."""
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key, Metadata=metadata)["UploadId"]
    parts = []
    for number, (start, size) in enumerate(part_ranges(len(data), part_bytes), start=1):
        answer = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=data[start : start + size]
        )
        parts.append({"ETag": answer["ETag"], "PartNumber": number})
    client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def test_an_etag_of_other_parts_is_settled_by_the_sha256_metadata_or_one_upload(
    s3_server: EmbeddedS3, bucket: str, prefix: str, tmp_path: Path
) -> None:
    data = random_bytes(2 * 8 * MiB - 1, seed=4)  # two of our default 8 MiB parts, four of 5 MiB
    (tmp_path / "ours.bin").write_bytes(data)  # as an SSE-KMS bucket has it: an ETag we cannot compute
    (tmp_path / "theirs.bin").write_bytes(data)  # as `aws s3 sync` with other settings left it: no metadata
    client = s3_server.client()
    put_in_parts(client, f"{prefix}/ours.bin", data, PART, {"sha256": hashlib.sha256(data).hexdigest()})
    put_in_parts(client, f"{prefix}/theirs.bin", data, PART, {})

    first = sync(s3_server, tmp_path, prefix)
    second = sync(s3_server, tmp_path, prefix)

    assert first == [
        f"uploaded: {tmp_path / 'theirs.bin'} to s3://{BUCKET}/{prefix}/theirs.bin (checksum differs)",
        f"uploaded 1 file / {len(data):,} bytes, skipped 1 already in s3://{BUCKET}/{prefix}/",
    ]
    assert second == [f"uploaded 0 files / 0 bytes, skipped 2 already in s3://{BUCKET}/{prefix}/"]
    assert requests_for(s3_server, f"{prefix}/ours.bin", "HEAD") == 2  # one a run: its ETag never matches ours


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{dir}", "http://bucket-name/p/"], "'http://bucket-name/p/' is not an s3://bucket/prefix/ URL"),
        (["{dir}", "s3://"], "'s3://' is not an s3://bucket/prefix/ URL"),
        (["{dir}/missing", "s3://bucket-name/p/"], "Directory '{dir}/missing' does not exist"),
        (["{dir}/file", "s3://bucket-name/p/"], "Directory '{dir}/file' is a file"),
        (["{dir}", "s3://no-such-bucket/p/"], "(HTTP 404 NoSuchBucket) — check the bucket and region"),
        (["{dir}", "s3://bucket-name/p/", "--part-size", "1MiB"], "1MiB is outside S3's part sizes, 5MiB to 5GiB"),
        (["{dir}", "s3://bucket-name/p/", "--part-size", "lots"], "'lots' is not a size"),
        (["{dir}", "s3://bucket-name/p/", "--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["{dir}"], "Missing argument 'DESTINATION'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    s3_server: EmbeddedS3, bucket: str, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "file").write_bytes(b"x")

    result = run_prefetchd(s3_server, "sync", *(arg.format(dir=tmp_path) for arg in args))

    assert result.returncode == 2, result.stderr
    assert message.format(dir=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
