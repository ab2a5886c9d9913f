"""Put Fashion-MNIST into an S3 bucket: the compose stack's one-shot `seed` service, and the demo's upload.

    python -m prefetchd.testing.seed_bucket s3://bucket-name/training-data/

The store and its credentials come from the standard AWS variables (`AWS_ENDPOINT_URL_S3`,
`AWS_ACCESS_KEY_ID`, ...), as the daemon reads them; the dataset is found as the demo finds it
(`prefetchd.testing.datasets`). The bucket is created if missing and the four IDX files are uploaded, so a
second run leaves the same objects behind.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .datasets import FILES, fashion_mnist


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix/` → (bucket, prefix without slashes at its ends)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix/ URL")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def s3_client() -> Any:
    """A botocore client configured by the environment alone, path-style (MinIO's default addressing)."""
    import botocore.config
    import botocore.session

    config = botocore.config.Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5})
    return botocore.session.get_session().create_client("s3", config=config)


def upload_files(client: Any, bucket: str, prefix: str, paths: Sequence[Path]) -> list[str]:
    """Create `bucket` if needed and upload `paths` under `prefix`; returns their s3:// URLs."""
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    urls = []
    for path in paths:
        key = f"{prefix.strip('/')}/{path.name}" if prefix.strip("/") else path.name
        with open(path, "rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body)
        urls.append(f"s3://{bucket}/{key}")
    return urls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefetchd.testing.seed_bucket", description="Upload Fashion-MNIST's IDX files to S3."
    )
    parser.add_argument("url", help="where the files go, e.g. s3://bucket-name/training-data/")
    args = parser.parse_args(argv)
    try:
        bucket, prefix = split_url(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    directory = fashion_mnist()
    urls = upload_files(s3_client(), bucket, prefix, [directory / name for name in FILES])
    print(f"uploaded {len(urls)} objects from {directory} to s3://{bucket}/{prefix}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
