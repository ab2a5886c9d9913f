"""An S3-like endpoint made of nginx: a fast real HTTP server for files under `root`, path-style.

moto implements the S3 API but moves ~50 MB/s; nginx serves the same bytes at memory speed with the parts of
S3 that a reader of objects meets: `GET /bucket/key` answers the file `root/bucket/key`, with `Range` (206 and
`Content-Range`), `HEAD`, an `ETag`, `If-Match` (412 when it differs) and S3's XML error bodies (404
`NoSuchKey`, 412 `PreconditionFailed`, 416 `InvalidRange`). It checks no signature, so any credentials do,
and it has no listing, no PUT and no buckets to create: `put()` writes the file in place.

nginx runs as a child process (no daemon, its own pid, logs and temporary files in a scratch directory),
optionally with TLS under a certificate made here for 127.0.0.1 and localhost (`ca_path` verifies it).
The binary comes from `$PREFETCHD_NGINX`, else a system nginx, else Debian's `nginx` package fetched with
`apt-get download` and unpacked into the cache (no root needed); `NginxUnavailable` lists what was tried.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .datasets import cache_root
from .embedded_s3 import CREDENTIALS
from .processes import stop_child

if TYPE_CHECKING:
    from .self_signed import Certificates

NGINX_ENV = "PREFETCHD_NGINX"
DEBIAN_PACKAGE = "nginx"  # holds /usr/sbin/nginx with the ssl module; nginx-light/-core only add modules
_SYSTEM_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_PORT_ATTEMPTS = 5

_S3_ERRORS = {  # status: (S3's error code, its message)
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    405: ("MethodNotAllowed", "The specified method is not allowed against this resource."),
    412: ("PreconditionFailed", "At least one of the pre-conditions you specified did not hold"),
    416: ("InvalidRange", "The requested range is not satisfiable"),
}


class NginxUnavailable(RuntimeError):
    """No nginx binary could be found or fetched; the message lists every place tried."""


def find_nginx(cache: Path | None = None) -> Path:
    """An nginx binary that runs here: `$PREFETCHD_NGINX`, a system one, or Debian's package, unpacked once."""
    tried = []
    override = os.environ.get(NGINX_ENV)
    if override:
        if _runs(Path(override)):
            return Path(override)
        raise NginxUnavailable(f"${NGINX_ENV}={override} is not an nginx binary that runs here")
    tried.append(f"${NGINX_ENV} (unset)")
    on_path = shutil.which("nginx")
    for candidate in ([on_path] if on_path else []) + list(_SYSTEM_PATHS):
        if _runs(Path(candidate)):
            return Path(candidate)
    tried.append("nginx on PATH and in " + ", ".join(_SYSTEM_PATHS))
    target = (cache or cache_root()) / "nginx"
    unpacked = target / "root" / "usr" / "sbin" / "nginx"
    try:
        with _locked(target):
            if not _runs(unpacked):
                _apt_download(target)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else ""
        tried.append(f"apt-get download {DEBIAN_PACKAGE} into {target} ({exc}{': ' + detail if detail else ''})")
    else:
        if _runs(unpacked):
            return unpacked
        tried.append(f"Debian's {DEBIAN_PACKAGE} package unpacked in {target} (its binary does not run here)")
    raise NginxUnavailable(
        "nginx not found; tried: " + "; ".join(tried) + f". Install it (apt-get install nginx) or set ${NGINX_ENV}"
    )


def _runs(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        return subprocess.run([str(binary), "-v"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One fetch at a time when several processes (test workers, benchmarks) start at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _apt_download(target: Path) -> None:
    """Debian's package, fetched without installing it and unpacked under `target/root`."""
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        subprocess.run(
            ["apt-get", "download", DEBIAN_PACKAGE], cwd=scratch, check=True, capture_output=True, timeout=300
        )
        (deb,) = Path(scratch).glob("*.deb")
        unpacked = Path(scratch) / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True, capture_output=True, timeout=300)
        shutil.rmtree(target / "root", ignore_errors=True)
        unpacked.rename(target / "root")


class NginxS3:
    """`with NginxS3(root) as server:` serves `root/bucket/key` at `server.endpoint_url` until the block ends."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        tls: bool = False,
        host: str = "127.0.0.1",
        workers: int = 1,
        keepalive_requests: int = 1_000_000,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.tls = tls
        self.host = host
        self.workers = workers
        self.keepalive_requests = keepalive_requests  # nginx closes a connection after this many requests
        self.start_timeout_s = start_timeout_s
        self.endpoint_url = ""
        self.ca_path: Path | None = None  # the certificate that verifies the server, with tls=True
        self._scratch = Path(tempfile.mkdtemp(prefix="pfd-nginx-"))
        self.root = root or self._scratch / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._certificates: Certificates | None = None

    def __enter__(self) -> NginxS3:
        try:
            binary = find_nginx()
            if self.tls:
                from .self_signed import write_certificates  # cryptography, only for TLS

                self._certificates = write_certificates(self._scratch / "tls", hosts=(self.host, "localhost"))
                self.ca_path = self._certificates.ca_path
            for _ in range(_PORT_ATTEMPTS):
                port = _free_port(self.host)
                if self._start(binary, port):
                    scheme = "https" if self.tls else "http"
                    self.endpoint_url = f"{scheme}://{self.host}:{port}"
                    return self
            raise RuntimeError(f"nginx found no free port in {_PORT_ATTEMPTS} tries:\n{self.log()}")
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_child(self._process)  # SIGTERM: nginx's fast shutdown
            self._process = None
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _start(self, binary: Path, port: int) -> bool:
        """Start nginx on `port`; True once it listens, False if the port was taken meanwhile."""
        pid_file = self._scratch / "nginx.pid"
        pid_file.unlink(missing_ok=True)
        (self._scratch / "error.log").write_bytes(b"")
        config = self._scratch / "nginx.conf"
        config.write_text(self._config(port))
        self._process = subprocess.Popen(
            [str(binary), "-p", str(self._scratch), "-c", str(config), "-e", str(self._scratch / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            # nginx writes its pid file after it has opened its listening sockets: then it is ready
            if pid_file.exists() and pid_file.read_text().strip() == str(self._process.pid):
                return True
            if self._process.poll() is not None:
                self._process = None
                if "Address already in use" in self.log():
                    return False
                raise RuntimeError(f"nginx did not start:\n{self.log()}")
            time.sleep(0.01)
        raise RuntimeError(f"nginx did not start in {self.start_timeout_s} s:\n{self.log()}")

    def _config(self, port: int) -> str:
        scratch = self._scratch
        # a master running as root hands requests to workers of another user: keep ours, so they read our files
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        listen = f"listen {self.host}:{port}" + (" ssl;" if self.tls else ";")
        files = self._certificates
        tls = ""
        if files is not None:
            tls = f"ssl_certificate {_quoted(files.certificate_path)}; ssl_certificate_key {_quoted(files.key_path)};"
        temp_paths = "".join(
            f"{kind}_temp_path {_quoted(scratch / kind)};\n    "
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        errors = "\n".join(
            f"        error_page {status} @{status};\n"
            f"        location @{status} {{ default_type application/xml; return {status} '{_error_xml(status)}'; }}"
            for status in _S3_ERRORS
        )
        return f"""daemon off;
master_process on;
worker_processes {self.workers};
pid {_quoted(scratch / "nginx.pid")};
error_log {_quoted(scratch / "error.log")} warn;
{user}
events {{ worker_connections 4096; }}
http {{
    {temp_paths}access_log {_quoted(scratch / "access.log")};
    types {{ }}
    default_type application/octet-stream;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 120s;
    keepalive_requests {self.keepalive_requests};
    server {{
        {listen}
        {tls}
        root {_quoted(self.root)};
        merge_slashes off;
        if ($request_method !~ ^(GET|HEAD)$) {{ return 405; }}
        location / {{
            try_files $uri =404;
        }}
{errors}
    }}
}}
"""

    def put(self, bucket: str, key: str, data: bytes | Path) -> str:
        """Make `s3://bucket/key` hold `data`; a path is linked, not copied (the object is that file).

        nginx's ETag is the file's mtime in seconds and its size: a replaced object is given a later mtime
        when it would otherwise keep its ETag, so that `If-Match` on the old one fails as on S3.
        """
        target = self.root / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.stat() if target.exists() else None
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        if isinstance(data, Path):
            try:
                os.link(data, partial)
            except OSError:  # another file system
                partial.symlink_to(data.resolve())
        else:
            partial.write_bytes(data)
        new = partial.stat()
        if old is not None and new.st_ino != old.st_ino and _etag(new) == _etag(old):
            if isinstance(data, Path):  # a copy of its own, so that the caller's file keeps its mtime
                partial.unlink()
                shutil.copyfile(data, partial)
            later = int(old.st_mtime) + 1
            os.utime(partial, (later, later))
        os.replace(partial, target)
        return f"s3://{bucket}/{key}"

    def upload_files(self, bucket: str, prefix: str, paths: list[Path]) -> list[str]:
        """`paths` as objects under `prefix` (as `EmbeddedS3.upload_files` does); returns their s3:// URLs."""
        prefix = prefix.strip("/")
        return [self.put(bucket, f"{prefix}/{path.name}" if prefix else path.name, path) for path in paths]

    def environment(self) -> dict[str, str]:
        """What a daemon or an AWS client needs in its environment to use this server."""
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint_url}
        if self.ca_path is not None:
            env["AWS_CA_BUNDLE"] = str(self.ca_path)
        return env

    def client(self, endpoint_url: str | None = None) -> Any:
        """A plain botocore client for this server (or for a proxy in front of it, at `endpoint_url`):
        path-style, any credentials, verifying `ca_path`."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            verify=str(self.ca_path) if self.ca_path else None,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )

    def requests(self) -> list[str]:
        """nginx's access log, one line per request answered so far (`"GET /bucket/key HTTP/1.1" 206 ...`)."""
        try:
            return (self._scratch / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def log(self) -> str:
        try:
            return (self._scratch / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _error_xml(status: int) -> str:
    code, message = _S3_ERRORS[status]
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
        "<Resource>$uri</Resource><RequestId>$request_id</RequestId></Error>"
    )


def _quoted(path: Path) -> str:
    """A path as an nginx string: quoted, so that spaces and semicolons stay in it."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _etag(stat: os.stat_result) -> tuple[int, int]:
    return int(stat.st_mtime), stat.st_size


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
