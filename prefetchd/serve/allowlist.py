"""Which objects the daemon reads for its clients: the operator's optional `allowed_prefixes`.

The daemon reads with its own credentials and file permissions on behalf of every peer it admits, so an
operator who shares it (`allowed_uids`) can fence it to the datasets it is meant for. A URL is compared in
the form the sources will read it: `s3://bucket/key` as `parse_s3_url` splits it (no query, no fragment),
a local path with its symbolic links and `..` resolved. An S3 key with `.` or `..` segments is refused under
an allowlist: an HTTP client may fold them away and fetch a key outside the prefix that was checked.

Local files are read with the daemon's file permissions, which may be wider than the peer's (a daemon run
as root for a host's users): without an allowlist, they are served to the daemon's own uid only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prefetchd_client.errors import AccessDenied, InvalidRequest

from ..fetch.source import local_path, parse_s3_url, scheme_of


def allowed_name(url: str, resolve: Callable[[str], str] = os.path.realpath) -> str:
    """The name `url` is checked under: `s3://bucket/key`, or the resolved absolute path of a local file."""
    if scheme_of(url) == "s3":
        location = parse_s3_url(url)
        if {".", ".."} & set(location.key.split("/")):
            raise AccessDenied(
                f"{url}: a key with . or .. segments is not served under allowed_prefixes; name the key plainly",
                url=url,
            )
        return location.url
    return resolve(os.path.abspath(local_path(url)))


def check_sources(
    urls: Iterable[str], prefixes: tuple[str, ...], resolve: Callable[[str], str] = os.path.realpath
) -> None:
    """Raise `AccessDenied` naming the first URL outside `prefixes`; no prefixes means no limit.

    `resolve` touches the filesystem for local paths: call this off the event loop.
    """
    if not prefixes:
        return
    for url in urls:
        try:
            name = allowed_name(url, resolve)
        except InvalidRequest as exc:
            raise AccessDenied(f"{url} is not served under allowed_prefixes: {exc.message}", url=url) from exc
        if not name.startswith(prefixes):
            shown = "" if name == url else f" (read as {name})"
            raise AccessDenied(
                f"{url}{shown} is outside this daemon's allowed_prefixes ({', '.join(prefixes)}); "
                "use a dataset under one of them, or ask the daemon's operator to add its prefix",
                url=url,
            )


def check_local_sources_for(uid: int, urls: Iterable[str], daemon_uid: int | None = None) -> None:
    """Refuse local files to a peer of another uid when no allowlist says which the daemon may read for it."""
    if uid == (os.getuid() if daemon_uid is None else daemon_uid):
        return
    for url in urls:
        if scheme_of(url) != "s3":
            raise AccessDenied(
                f"{url}: this daemon reads local files for its own uid only (the client is uid {uid}); use an "
                "s3:// URL, or ask the daemon's operator to list the directory in allowed_prefixes",
                url=url,
            )
