"""The allowlist of prefixes (prefetchd/serve/allowlist.py): URLs compared as the sources will read them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetchd.serve.allowlist import allowed_name, check_local_sources_for, check_sources
from prefetchd_client.errors import AccessDenied

PREFIXES = ("s3://data/train/", "/srv/datasets/")
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)


@given(st.lists(segment, min_size=1, max_size=5))
def test_every_key_under_an_allowed_prefix_is_served(parts: list[str]) -> None:
    check_sources([f"s3://data/train/{'/'.join(parts)}"], PREFIXES)


@given(segment, st.lists(segment, min_size=1, max_size=4))
def test_no_other_bucket_is_served_however_its_name_begins(suffix: str, parts: list[str]) -> None:
    url = f"s3://data{suffix}/train/{'/'.join(parts)}"
    with pytest.raises(AccessDenied, match=re.escape(url) + " is outside this daemon's allowed_prefixes"):
        check_sources([url], PREFIXES)


def test_the_error_names_the_url_and_every_allowed_prefix() -> None:
    with pytest.raises(AccessDenied) as refused:
        check_sources(["s3://data/train/ok", "s3://data/test/x"], PREFIXES)
    assert refused.value.url == "s3://data/test/x"
    assert "(s3://data/train/, /srv/datasets/)" in refused.value.message


@pytest.mark.parametrize("key", ["train/../secret", "train/./x", "train/a/..", "./train/x"])
def test_dot_segments_are_refused_under_an_allowlist(key: str) -> None:
    with pytest.raises(AccessDenied, match=r"\. or \.\. segments"):
        check_sources([f"s3://data/{key}"], PREFIXES)


def test_a_query_or_fragment_is_not_part_of_the_name_read() -> None:
    assert allowed_name("s3://data/other/x?prefix=train/") == "s3://data/other/x"
    with pytest.raises(AccessDenied):
        check_sources(["s3://data/other/x#/train/"], PREFIXES)


def test_local_paths_are_compared_resolved(tmp_path: Path) -> None:
    allowed = (f"{tmp_path}/data/",)
    (tmp_path / "data").mkdir()
    (tmp_path / "secret").write_text("x")
    (tmp_path / "data" / "link").symlink_to(tmp_path / "secret")
    check_sources([str(tmp_path / "data" / "file"), f"file://{tmp_path}/data/file"], allowed)
    for escape in (tmp_path / "data" / "link", tmp_path / "data" / ".." / "secret"):
        with pytest.raises(AccessDenied, match=re.escape(f"(read as {tmp_path / 'secret'})")):
            check_sources([str(escape)], allowed)


def test_a_url_the_sources_would_refuse_is_refused_as_not_allowed() -> None:
    with pytest.raises(AccessDenied, match="gs:// scheme is not supported"):
        check_sources(["gs://data/train/x"], PREFIXES)


def test_no_prefixes_means_no_limit() -> None:
    check_sources(["s3://anything/at/all", "gs://even/this"], ())


def test_local_files_are_read_for_the_daemons_own_uid_only_and_s3_for_anyone() -> None:
    check_local_sources_for(1000, ["/srv/datasets/a", "file:///srv/b"], daemon_uid=1000)
    check_local_sources_for(1001, ["s3://data/train/a"], daemon_uid=1000)
    with pytest.raises(AccessDenied, match="uid 1001") as refused:
        check_local_sources_for(1001, ["s3://data/train/a", "file:///srv/b"], daemon_uid=1000)
    assert refused.value.url == "file:///srv/b"
