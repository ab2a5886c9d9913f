"""The ranged GET's HTTP/1.1: request bytes and head parsing, by example and by generated input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefetchd.fetch.http11 import (
    MalformedResponse,
    expected_content_range,
    parse_head,
    parse_target,
    range_request,
)


def test_a_range_request_names_host_range_and_version() -> None:
    target = parse_target("http://127.0.0.1:9000/bucket-name/a%20b.rec?X-Amz-Signature=abc&X-Amz-Date=1")
    request = range_request(target, 8, 15, '"etag"').decode()
    lines = request.split("\r\n")
    assert lines[0] == "GET /bucket-name/a%20b.rec?X-Amz-Signature=abc&X-Amz-Date=1 HTTP/1.1"
    assert "Host: 127.0.0.1:9000" in lines
    assert "Range: bytes=8-15" in lines
    assert 'If-Match: "etag"' in lines
    assert request.endswith("\r\n\r\n") and request.count("\r\n\r\n") == 1


def test_default_ports_are_left_out_of_the_host_header() -> None:
    assert parse_target("https://bucket.s3.amazonaws.com/key").host_header == "bucket.s3.amazonaws.com"
    assert parse_target("http://[::1]:8080/b/k").host_header == "[::1]:8080"
    assert parse_target("https://h:443/b/k").origin == ("https", "h", 443)
    with pytest.raises(ValueError, match="not an http"):
        parse_target("ftp://h/b/k")


def test_a_partial_content_head_is_parsed() -> None:
    head = parse_head(
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 8\r\nContent-Range: bytes 8-15/100\r\n"
        b'ETag: "abc"\r\nx-amz-request-id:  XYZ '
    )
    assert (head.status, head.reason, head.content_length) == (206, "Partial Content", 8)
    assert head.content_range == expected_content_range(8, 15, 100)
    assert head.etag == '"abc"'
    assert head.headers["x-amz-request-id"] == "XYZ"
    assert head.keep_alive


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 206 OK\r\nConnection: close", False),
        (b"HTTP/1.0 206 OK", False),
        (b"HTTP/1.0 206 OK\r\nConnection: keep-alive", True),
        (b"HTTP/1.1 206 OK\r\nConnection: Keep-Alive", True),
    ],
)
def test_keep_alive_follows_version_and_connection_header(head: bytes, keep_alive: bool) -> None:
    assert parse_head(head).keep_alive is keep_alive


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"HTTP/2 206 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 abc OK",
        b"ICY 200 OK",
        b"HTTP/1.1 206 OK\r\nno colon here",
        b"HTTP/1.1 206 OK\r\n: empty name",
        b"HTTP/1.1 206 OK\r\nBad Name: x",
        b"HTTP/1.1 206 OK\r\n Folded: x",
        b"HTTP/1.1 206 OK\r\nTransfer-Encoding: chunked",
    ],
)
def test_heads_a_ranged_get_cannot_be_read_from_are_refused(head: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_head(head)


def test_a_body_length_must_be_stated() -> None:
    with pytest.raises(MalformedResponse, match="Content-Length"):
        _ = parse_head(b"HTTP/1.1 206 OK").content_length
    with pytest.raises(MalformedResponse, match="Content-Length"):
        _ = parse_head(b"HTTP/1.1 206 OK\r\nContent-Length: -5").content_length


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_malformed_response(data: bytes) -> None:
    try:
        head = parse_head(data)
    except MalformedResponse:
        return
    assert 100 <= head.status <= 999
    try:
        assert head.content_length >= 0
    except MalformedResponse:
        pass


_token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123"), min_size=1, max_size=12)


@settings(max_examples=1000, deadline=None)
@given(
    st.integers(100, 599),
    st.dictionaries(_token, st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20), max_size=8),
)
def test_generated_heads_round_trip(status: int, headers: dict[str, str]) -> None:
    headers = {k: v for k, v in headers.items() if k.lower() != "transfer-encoding"}
    text = f"HTTP/1.1 {status} Reason\r\n" + "\r\n".join(f"{k}: {v}" for k, v in headers.items())
    head = parse_head(text.encode())
    assert head.status == status
    assert head.headers == {k.lower(): v for k, v in headers.items()}  # names equal but for case: the last wins
