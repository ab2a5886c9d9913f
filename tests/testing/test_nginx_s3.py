"""nginx answers an S3 client's object reads as S3 does: ranges, ETags, If-Match and errors, with and without TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefetchd.testing.nginx_s3 import NGINX_ENV, NginxS3, NginxUnavailable, find_nginx
from tests.conftest import BUCKET

BODY = bytes(range(256)) * 8192  # 2 MiB


@pytest.fixture(scope="module", params=[False, True], ids=["http", "https"])
def nginx(request: pytest.FixtureRequest) -> Iterator[NginxS3]:
    with NginxS3(tls=request.param) as server:
        server.put(BUCKET, "nginx/object", BODY)
        yield server


def _error(call: Any, **kwargs: Any) -> tuple[int, str]:
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_a_ranged_get_answers_206_with_content_range_and_the_etag(nginx: NginxS3) -> None:
    client = nginx.client()
    assert nginx.endpoint_url.startswith("https://" if nginx.tls else "http://")
    head = client.head_object(Bucket=BUCKET, Key="nginx/object")
    assert head["ContentLength"] == len(BODY)
    part = client.get_object(Bucket=BUCKET, Key="nginx/object", Range="bytes=1000-1099999", IfMatch=head["ETag"])
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 1000-1099999/{len(BODY)}"
    assert part["ETag"] == head["ETag"]
    assert part["Body"].read() == BODY[1000:1100000]
    assert client.get_object(Bucket=BUCKET, Key="nginx/object")["Body"].read() == BODY
    assert any(f'"GET /{BUCKET}/nginx/object HTTP/1.1" 206' in line for line in nginx.requests())


def test_errors_come_back_as_s3_codes(nginx: NginxS3) -> None:
    client = nginx.client()
    get = client.get_object
    assert _error(get, Bucket=BUCKET, Key="nginx/object", Range="bytes=0-9", IfMatch='"0-0"') == (
        412,
        "PreconditionFailed",
    )
    assert _error(get, Bucket=BUCKET, Key="nginx/absent") == (404, "NoSuchKey")
    assert _error(client.head_object, Bucket=BUCKET, Key="nginx/absent")[0] == 404
    assert _error(get, Bucket=BUCKET, Key="nginx/object", Range=f"bytes={len(BODY)}-") == (416, "InvalidRange")
    assert _error(client.put_object, Bucket=BUCKET, Key="nginx/new", Body=b"x") == (405, "MethodNotAllowed")


def test_a_replaced_object_gets_a_new_etag_at_once(nginx: NginxS3, tmp_path: Path) -> None:
    client = nginx.client()
    nginx.put(BUCKET, "nginx/replaced", b"a" * 100)
    before = client.head_object(Bucket=BUCKET, Key="nginx/replaced")["ETag"]
    source = tmp_path / "same-size"
    source.write_bytes(b"b" * 100)
    nginx.put(BUCKET, "nginx/replaced", source)  # same size, most likely the same second
    assert _error(client.get_object, Bucket=BUCKET, Key="nginx/replaced", IfMatch=before) == (
        412,
        "PreconditionFailed",
    )
    assert client.get_object(Bucket=BUCKET, Key="nginx/replaced")["Body"].read() == b"b" * 100


@pytest.mark.parametrize("nginx", [True], ids=["https"], indirect=True)
def test_tls_is_verified_against_the_servers_own_authority(nginx: NginxS3) -> None:
    import botocore.config
    import botocore.exceptions
    import botocore.session

    assert nginx.ca_path is not None and nginx.ca_path.is_file()
    stranger = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=nginx.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.SSLError):
        stranger.head_object(Bucket=BUCKET, Key="nginx/object")


def test_a_missing_binary_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(NGINX_ENV, str(tmp_path / "no-such-nginx"))
    with pytest.raises(NginxUnavailable, match="no-such-nginx"):
        find_nginx()
