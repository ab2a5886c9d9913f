"""The emulated network answers as the S3 server behind it does, only later and slower."""

from __future__ import annotations

import time

import pytest

from prefetchd.testing.embedded_s3 import EmbeddedS3
from prefetchd.testing.network_proxy import NetworkProxy
from prefetchd.testing.nginx_s3 import NginxS3
from prefetchd.testing.shaped_relay import BURST_BYTES
from tests.conftest import BUCKET


def test_ranges_errors_and_pins_pass_through_with_the_latency_and_pace(
    s3_server: EmbeddedS3, fashion_urls: dict[str, str]
) -> None:
    import botocore.exceptions
    import botocore.session

    body = bytes(range(256)) * 8192  # 2 MiB
    s3_server.client().put_object(Bucket=BUCKET, Key="proxy/object", Body=body)
    with NetworkProxy(s3_server.endpoint_url, latency_ms=50, megabytes_per_s=20) as proxy:
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=proxy.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        head = client.head_object(Bucket=BUCKET, Key="proxy/object")
        assert head["ContentLength"] == len(body)
        started = time.monotonic()
        part = client.get_object(Bucket=BUCKET, Key="proxy/object", Range="bytes=1000-1099999", IfMatch=head["ETag"])
        assert part["Body"].read() == body[1000:1100000]
        assert part["ContentRange"] == f"bytes 1000-1099999/{len(body)}"
        elapsed = time.monotonic() - started
        assert elapsed >= 0.05 + 1_099_000 / 20e6 * 0.9, "latency and pace are applied"
        assert client.get_object(Bucket=BUCKET, Key="proxy/object")["Body"].read() == body
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            client.get_object(Bucket=BUCKET, Key="proxy/absent")
        assert missing.value.response["Error"]["Code"] == "NoSuchKey"
        with pytest.raises(botocore.exceptions.ClientError) as moved:
            client.get_object(Bucket=BUCKET, Key="proxy/object", IfMatch='"0000"')
        assert moved.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_relay_passes_nginx_through_with_the_latency_and_pace(tls: bool) -> None:
    import botocore.exceptions

    body = bytes(range(256)) * 8192  # 2 MiB
    with (
        NginxS3(tls=tls) as nginx,
        NetworkProxy(nginx.endpoint_url, latency_ms=50, megabytes_per_s=20, relay=True) as relay,
    ):
        nginx.put(BUCKET, "relay/object", body)
        assert relay.endpoint_url.split("://")[0] == nginx.endpoint_url.split("://")[0]
        client = nginx.client(relay.endpoint_url)
        head = client.head_object(Bucket=BUCKET, Key="relay/object")
        started = time.monotonic()
        part = client.get_object(Bucket=BUCKET, Key="relay/object", Range="bytes=1000-1099999", IfMatch=head["ETag"])
        assert part["Body"].read() == body[1000:1100000]
        assert part["ContentRange"] == f"bytes 1000-1099999/{len(body)}"
        elapsed = time.monotonic() - started
        # unpaced, this takes ~0.05 s; paced, ~0.09 s (the bucket refills while the first byte waits: slack)
        assert elapsed >= 0.05 + (1_099_000 - BURST_BYTES) / 20e6 * 0.75, "latency and pace are applied"
        with pytest.raises(botocore.exceptions.ClientError) as moved:
            client.get_object(Bucket=BUCKET, Key="relay/object", IfMatch='"0000"')
        assert moved.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
