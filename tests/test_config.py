"""The daemon's configuration (prefetchd/config.py) and the `prefetchd serve` command line (prefetchd/cli.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefetchd.config import Config, ConfigError, load_config, parse_bytes

MiB = 1 << 20
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"


def config(env: dict[str, str] | None = None, file: Path | None = None, **flags: Any) -> Config:
    return load_config(flags, env or {}, file)


def toml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prefetchd.toml"
    path.write_text(text)
    return path


def config_error(env: dict[str, str] | None = None, file: Path | None = None, **flags: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        config(env, file, **flags)
    return str(caught.value)


# precedence: flags > PREFETCHD_* environment > TOML file > defaults


def test_defaults_apply_when_nothing_is_set() -> None:
    loaded = config()

    assert (loaded.max_concurrency, loaded.chunk_bytes, loaded.min_chunk_bytes) == (32, 8 * MiB, MiB)
    assert (loaded.stream_budget_bytes, loaded.ring_bytes, loaded.max_slots) == (512 * MiB, 64 * MiB, 64)
    assert (loaded.decode_threads, loaded.exit_when_idle_s, loaded.log_level) == (2, None, "INFO")
    assert loaded.socket_path == Path(f"/tmp/prefetchd-{os.getuid()}/control.sock")
    assert loaded.s3.addressing_style == "auto" and loaded.s3.verify_ssl
    assert loaded.s3.env_names_used == ()
    assert loaded.http_address == "127.0.0.1:9464"  # loopback only unless told otherwise
    assert (loaded.max_ring_bytes, loaded.target_bytes_per_s) == (512 * MiB, 1_500_000_000)


def test_the_http_side_is_moved_or_turned_off_and_a_bad_address_is_refused() -> None:
    assert config(http_address="0.0.0.0:9100").http_address == "0.0.0.0:9100"
    assert config(env={"PREFETCHD_HTTP_ADDRESS": "off"}).http_address is None
    assert "http_address" in config_error(http_address="localhost:9464")


def test_file_beats_defaults_env_beats_file_flags_beat_env(tmp_path: Path) -> None:
    file = toml_file(tmp_path, 'chunk_bytes = "2MiB"\nmax_concurrency = 4\ndecode_threads = 3\nlog_level = "DEBUG"\n')
    env = {"PREFETCHD_MAX_CONCURRENCY": "16", "PREFETCHD_DECODE_THREADS": "5"}

    loaded = config(env, file, decode_threads=7, log_level=None)

    assert loaded.chunk_bytes == 2 * MiB  # file only
    assert loaded.max_concurrency == 16  # env over file
    assert loaded.decode_threads == 7  # flag over env and file
    assert loaded.log_level == "DEBUG"  # a flag left as None is not given
    assert loaded.min_chunk_bytes == MiB  # default


def test_prefetchd_config_variable_names_the_file(tmp_path: Path) -> None:
    file = toml_file(tmp_path, "[prefetchd]\nmax_slots = 9\n\n[prefetchd.s3]\nregion = 'eu-west-3'\n")

    loaded = config({"PREFETCHD_CONFIG": str(file)})

    assert loaded.max_slots == 9
    assert loaded.s3.region == "eu-west-3"


def test_socket_path_comes_from_flag_file_or_prefetchd_socket(tmp_path: Path) -> None:
    file = toml_file(tmp_path, "socket_path = '/run/from-file.sock'\n")

    assert config({"PREFETCHD_SOCKET": "/run/env.sock"}).socket_path == Path("/run/env.sock")
    assert config({"PREFETCHD_SOCKET": "/run/env.sock"}, file).socket_path == Path("/run/from-file.sock")
    assert config({}, file, socket_path=Path("/run/flag.sock")).socket_path == Path("/run/flag.sock")


def test_allowed_uids_come_from_the_file(tmp_path: Path) -> None:
    assert config(file=toml_file(tmp_path, "allowed_uids = [1001, 1002]\n")).allowed_uids == (1001, 1002)


def test_allowed_prefixes_come_from_the_file_and_a_bare_bucket_means_all_of_it(tmp_path: Path) -> None:
    file = toml_file(tmp_path, 'allowed_prefixes = ["s3://data/train/", "s3://shared", "/srv/datasets/"]\n')
    assert config(file=file).allowed_prefixes == ("s3://data/train/", "s3://shared/", "/srv/datasets/")
    assert config().allowed_prefixes == ()


def test_per_client_caps_default_to_16_streams_and_4_GiB_and_can_be_set(tmp_path: Path) -> None:
    assert (config().max_streams_per_client, config().max_ring_bytes_per_client) == (16, 4096 * MiB)
    file = toml_file(tmp_path, 'max_streams_per_client = 4\nmax_ring_bytes_per_client = "1GiB"\n')
    assert (config(file=file).max_streams_per_client, config(file=file).max_ring_bytes_per_client) == (4, 1024 * MiB)
    assert config({"PREFETCHD_MAX_STREAMS_PER_CLIENT": "2"}).max_streams_per_client == 2


def test_the_stall_timeout_is_10_s_unless_a_flag_env_or_file_says_otherwise(tmp_path: Path) -> None:
    assert config().stall_timeout_s == 10.0
    assert config(file=toml_file(tmp_path, "stall_timeout_s = 2.5\n")).stall_timeout_s == 2.5
    assert config({"PREFETCHD_STALL_TIMEOUT_S": "0.3"}).stall_timeout_s == 0.3
    assert config({"PREFETCHD_STALL_TIMEOUT_S": "0.3"}, stall_timeout_s=4.0).stall_timeout_s == 4.0


def test_hedging_is_on_at_1_5x_p95_and_5_percent_unless_a_flag_env_or_file_says_otherwise(tmp_path: Path) -> None:
    from prefetchd.fetch.router import hedge_policy

    default = config()
    assert (default.hedge, default.hedge_multiplier, default.hedge_min_delay_s, default.hedge_budget) == (
        True,
        1.5,
        0.05,
        0.05,
    )
    policy = hedge_policy(default)
    assert policy is not None and (policy.multiplier, policy.min_delay_s, policy.budget) == (1.5, 0.05, 0.05)
    assert hedge_policy(config({"PREFETCHD_HEDGE": "off"})) is None
    assert config({"PREFETCHD_HEDGE": "off"}, hedge=True).hedge is True
    file = toml_file(tmp_path, "hedge = false\nhedge_multiplier = 3\nhedge_budget = 0.1\n")
    assert (config(file=file).hedge, config(file=file).hedge_multiplier, config(file=file).hedge_budget) == (
        False,
        3.0,
        0.1,
    )
    assert config({"PREFETCHD_HEDGE_MIN_DELAY_S": "0.25"}).hedge_min_delay_s == 0.25


def test_config_is_frozen() -> None:
    loaded = config()

    with pytest.raises(AttributeError):
        loaded.max_concurrency = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8MiB", 8 * MiB),
        ("512M", 512 * 1000**2),
        ("512MB", 512 * 1000**2),
        ("1GiB", 1 << 30),
        ("1gib", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("4KiB", 4096),
        ("4 K", 4000),
        ("2TiB", 2 << 40),
        ("1048576", 1048576),
        ("77B", 77),
        (" 3 MiB ", 3 * MiB),
    ],
)
def test_sizes_read_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_size_settings_accept_units_from_every_source(tmp_path: Path) -> None:
    file = toml_file(tmp_path, 'ring_bytes = "128MiB"\nmin_chunk_bytes = 2097152\n')

    loaded = config({"PREFETCHD_STREAM_BUDGET_BYTES": "1GiB"}, file, chunk_bytes="4M")

    assert (loaded.chunk_bytes, loaded.min_chunk_bytes) == (4_000_000, 2 * MiB)
    assert (loaded.stream_budget_bytes, loaded.ring_bytes) == (1 << 30, 128 * MiB)


def test_the_disk_cache_directory_and_budget_come_from_flag_env_or_file(tmp_path: Path) -> None:
    file = toml_file(tmp_path, 'cache_dir = "/var/cache/from-file"\ncache_disk_bytes = "100GiB"\n')
    env = {"PREFETCHD_CACHE_DIR": "~/from-env", "PREFETCHD_CACHE_DISK_BYTES": "1GiB"}

    assert (config().cache_dir, config().cache_disk_bytes) == (None, 16 << 30)
    assert (config({}, file).cache_dir, config({}, file).cache_disk_bytes) == (Path("/var/cache/from-file"), 100 << 30)
    assert (config(env, file).cache_dir, config(env, file).cache_disk_bytes) == (Path.home() / "from-env", 1 << 30)
    flagged = config(env, file, cache_dir="/from-flag", cache_disk_bytes="2GiB")
    assert (flagged.cache_dir, flagged.cache_disk_bytes) == (Path("/from-flag"), 2 << 30)


# MXNet's USE_S3 variables, ranked as dmlc-core's src/io/s3_filesys.cc ranks them


@pytest.mark.parametrize(
    ("field", "s3_name", "aws_name"),
    [
        ("access_key_id", "S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
        ("region", "S3_REGION", "AWS_REGION"),
    ],
)
def test_s3_name_comes_before_its_aws_twin_and_an_empty_one_falls_through(
    field: str, s3_name: str, aws_name: str
) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "AKIDAWS", "AWS_SECRET_ACCESS_KEY": "aws-secret"}

    both = config({**keys, s3_name: "from-s3", aws_name: "from-aws"}).s3
    empty = config({**keys, s3_name: "", aws_name: "from-aws"}).s3
    aws_only = config({**keys, aws_name: "from-aws"}).s3

    assert getattr(both, field) == "from-s3"
    assert s3_name in both.env_names_used and aws_name not in both.env_names_used
    assert getattr(empty, field) == "from-aws"
    assert aws_name in empty.env_names_used and s3_name not in empty.env_names_used
    assert getattr(aws_only, field) == "from-aws"


def test_region_falls_back_to_aws_default_region() -> None:
    s3 = config({"AWS_DEFAULT_REGION": "ap-south-1"}).s3

    assert s3.region == "ap-south-1"
    assert s3.env_names_used == ("AWS_DEFAULT_REGION",)


def test_region_setting_beats_the_s3_and_aws_variables(tmp_path: Path) -> None:
    env = {"S3_REGION": "us-west-2", "AWS_REGION": "us-east-2"}

    assert config(env, region="eu-north-1").s3.region == "eu-north-1"
    assert config({**env, "PREFETCHD_REGION": "eu-central-1"}).s3.region == "eu-central-1"
    assert config(env, toml_file(tmp_path, "[s3]\nregion = 'sa-east-1'\n")).s3.region == "sa-east-1"
    assert "S3_REGION" not in config(env, region="eu-north-1").s3.env_names_used


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("minio.internal:9000", "https://minio.internal:9000"),
        ("s3.example.com", "https://s3.example.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("https://storage.example.com", "https://storage.example.com"),
    ],
)
def test_s3_endpoint_without_a_scheme_speaks_https(endpoint: str, url: str) -> None:
    s3 = config({"S3_ENDPOINT": endpoint}).s3

    assert s3.endpoint_url == url
    assert s3.env_names_used == ("S3_ENDPOINT",)


def test_s3_endpoint_comes_before_aws_endpoint_url_and_an_empty_one_falls_through() -> None:
    aws = {"AWS_ENDPOINT_URL_S3": "http://aws-s3:9000", "AWS_ENDPOINT_URL": "http://aws-all:9000"}

    assert config({**aws, "S3_ENDPOINT": "http://dmlc:9000"}).s3.endpoint_url == "http://dmlc:9000"
    assert config({**aws, "S3_ENDPOINT": ""}).s3.endpoint_url == "http://aws-s3:9000"
    assert config({"AWS_ENDPOINT_URL": "http://aws-all:9000"}).s3.endpoint_url == "http://aws-all:9000"
    assert config(aws, endpoint_url="http://flag:9000").s3.endpoint_url == "http://flag:9000"


@pytest.mark.parametrize(("value", "verify"), [(None, True), ("1", True), ("0", False), ("true", False), ("2", False)])
def test_s3_verify_ssl_is_on_only_when_unset_or_1(value: str | None, verify: bool) -> None:
    env = {} if value is None else {"S3_VERIFY_SSL": value}

    assert config(env).s3.verify_ssl is verify


@pytest.mark.parametrize(("value", "verify"), [("false", False), ("0", False), ("true", True), ("on", True)])
def test_prefetchd_verify_ssl_reads_true_and_false(value: str, verify: bool) -> None:
    assert config({"PREFETCHD_VERIFY_SSL": value, "S3_VERIFY_SSL": "1"}).s3.verify_ssl is verify


@pytest.mark.parametrize(
    ("env", "style"),
    [
        ({"S3_IS_AWS": "0"}, "path"),
        ({"S3_IS_AWS": "1"}, "virtual"),
        ({"S3_IS_AWS": "1", "S3_ENDPOINT": "minio:9000"}, "virtual"),
        ({"S3_ENDPOINT": "minio:9000"}, "path"),
        ({"AWS_ENDPOINT_URL": "http://localhost:5000"}, "path"),
        ({}, "auto"),
        ({"S3_IS_AWS": "0", "PREFETCHD_ADDRESSING_STYLE": "virtual"}, "virtual"),
    ],
)
def test_addressing_style_follows_s3_is_aws_then_the_endpoint(env: dict[str, str], style: str) -> None:
    assert config(env).s3.addressing_style == style


def test_addressing_style_flag_beats_s3_is_aws() -> None:
    assert config({"S3_IS_AWS": "0"}, addressing_style="virtual").s3.addressing_style == "virtual"


def test_env_names_used_lists_exactly_the_variables_that_supplied_values() -> None:
    env = {
        "S3_ACCESS_KEY_ID": "AKIDS3",
        "AWS_ACCESS_KEY_ID": "AKIDAWS",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "S3_REGION": "",
        "AWS_REGION": "eu-west-1",
        "S3_ENDPOINT": "minio:9000",
        "AWS_ENDPOINT_URL": "http://ignored:1",
        "S3_VERIFY_SSL": "0",
        "PREFETCHD_PROFILE": "training",
        "AWS_PROFILE": "ignored",
        "HOME": "/home/trainer",
    }

    s3 = config(env).s3

    assert sorted(s3.env_names_used) == sorted(
        [
            "S3_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "S3_ENDPOINT",
            "S3_VERIFY_SSL",
            "PREFETCHD_PROFILE",
        ]
    )
    assert set(s3.env_names_used) <= set(env)
    assert not set(s3.env_names_used) & set(env.values())
    assert (s3.access_key_id, s3.secret_access_key, s3.session_token) == ("AKIDS3", SECRET, TOKEN)
    assert (s3.region, s3.endpoint_url, s3.verify_ssl, s3.profile) == (
        "eu-west-1",
        "https://minio:9000",
        False,
        "training",
    )


def test_secrets_never_appear_in_repr_or_str() -> None:
    loaded = config({"S3_ACCESS_KEY_ID": "AKIDEXAMPLE", "S3_SECRET_ACCESS_KEY": SECRET, "S3_SESSION_TOKEN": TOKEN})

    for text in (repr(loaded), str(loaded), repr(loaded.s3), str(loaded.s3)):
        assert SECRET not in text and TOKEN not in text
        assert "AKIDEXAMPLE" not in text
    assert "env_names_used=('S3_ACCESS_KEY_ID', 'S3_SECRET_ACCESS_KEY', 'S3_SESSION_TOKEN')" in repr(loaded)


@pytest.mark.parametrize(
    "env",
    [
        {"S3_ACCESS_KEY_ID": "AKIDEXAMPLE"},
        {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "S3_SECRET_ACCESS_KEY": ""},
        {"AWS_SECRET_ACCESS_KEY": SECRET},
    ],
)
def test_access_key_without_a_secret_or_the_reverse_is_refused(env: dict[str, str]) -> None:
    message = config_error(env)

    assert "access key id" in message and "secret access key" in message
    assert SECRET not in message and "AKIDEXAMPLE" not in message


# every invalid setting is a ConfigError that names it


@pytest.mark.parametrize(
    ("name", "env_value"),
    [
        ("max_concurrency", "0"),
        ("max_concurrency", "many"),
        ("chunk_bytes", "banana"),
        ("chunk_bytes", "8XB"),
        ("chunk_bytes", "-1MiB"),
        ("min_chunk_bytes", "100"),
        ("chunk_bytes", "512KiB"),  # below min_chunk_bytes
        ("stream_budget_bytes", "8MiB"),  # not two chunks
        ("ring_bytes", "lots"),
        ("cache_disk_bytes", "lots"),
        ("max_slots", "1"),
        ("decode_threads", "0"),
        ("exit_when_idle_s", "soon"),
        ("exit_when_idle_s", "-5"),
        ("log_level", "LOUD"),
        ("fetch_path", "curl"),
        ("stall_timeout_s", "0"),
        ("stall_timeout_s", "soon"),
        ("hedge", "sometimes"),
        ("hedge_multiplier", "0.5"),
        ("hedge_min_delay_s", "-1"),
        ("hedge_budget", "2"),
        ("addressing_style", "sideways"),
        ("verify_ssl", "maybe"),
    ],
)
def test_invalid_setting_is_a_config_error_naming_it(name: str, env_value: str) -> None:
    assert name in config_error({f"PREFETCHD_{name.upper()}": env_value})


@pytest.mark.parametrize(
    ("name", "toml"),
    [
        ("allowed_uids", 'allowed_uids = ["root"]'),
        ("allowed_uids", 'allowed_uids = "1000"'),
        ("allowed_prefixes", 'allowed_prefixes = "s3://data/"'),
        ("allowed_prefixes", 'allowed_prefixes = ["data/train/"]'),
        ("allowed_prefixes", 'allowed_prefixes = ["gs://data/"]'),
        ("max_streams_per_client", "max_streams_per_client = 0"),
        ("max_ring_bytes_per_client", 'max_ring_bytes_per_client = "1KiB"'),
        ("socket_path", "socket_path = 5"),
        ("max_concurrency", "max_concurrency = [1]"),
        ("chunk_bytes", "chunk_bytes = 1.5"),
        ("verify_ssl", "[s3]\nverify_ssl = 'perhaps'"),
    ],
)
def test_invalid_setting_in_the_file_is_a_config_error_naming_it(tmp_path: Path, name: str, toml: str) -> None:
    assert name in config_error(file=toml_file(tmp_path, toml + "\n"))


def test_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    message = config_error(file=toml_file(tmp_path, "max_concurrency = 8\nchunk_size = '8MiB'\n"))

    assert "unknown settings ['chunk_size']" in message
    assert "prefetchd.toml" in message


def test_unknown_setting_in_the_s3_table_is_refused(tmp_path: Path) -> None:
    message = config_error(file=toml_file(tmp_path, "[s3]\nregion = 'eu-west-1'\nendpoint = 'http://minio:9000'\n"))

    assert "unknown settings ['s3.endpoint']" in message


def test_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    assert "is not valid TOML" in config_error(file=toml_file(tmp_path, "max_concurrency = = 3\n"))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert f"config file {tmp_path / 'absent.toml'} does not exist" in config_error(file=tmp_path / "absent.toml")


# the command line


def prefetchd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m prefetchd ...` with a clean environment, so no setting leaks in from the developer's shell."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PREFETCHD_SOCKET": "/nonexistent/prefetchd.sock"}
    return subprocess.run(
        [sys.executable, "-m", "prefetchd", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (["--concurrency", "0"], {}, "Invalid value for '--concurrency': 0 is not in the range x>=1"),
        (["--chunk-size", "banana"], {}, "chunk_bytes: 'banana' is not valid"),
        (["--no-such-option"], {}, "No such option"),
        (["--config", "/nonexistent/prefetchd.toml"], {}, "config file /nonexistent/prefetchd.toml does not exist"),
        (["--log-level", "loud"], {}, "Invalid value for '--log-level'"),
        (["--fetch-path", "curl"], {}, "Invalid value for '--fetch-path'"),
        (["--budget", "1MiB"], {}, "stream_budget_bytes must hold two chunks"),
        ([], {"PREFETCHD_MAX_CONCURRENCY": "0"}, "max_concurrency must be at least 1"),
        ([], {"PREFETCHD_LOG_LEVEL": "loud"}, "log_level is one of DEBUG, INFO, WARNING, ERROR"),
        ([], {"S3_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "set both an access key id and a secret access key"),
    ],
)
def test_serve_with_a_bad_setting_exits_2_naming_the_problem(
    args: list[str], env: dict[str, str], problem: str
) -> None:
    result = prefetchd("serve", *args, env=env)

    assert result.returncode == 2, result.stderr
    assert problem in result.stderr
    assert "Usage: python -m prefetchd serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands() -> None:
    result = prefetchd("--help")

    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "demo" in result.stdout and "--version" in result.stdout


def test_serve_help_lists_the_options() -> None:
    result = prefetchd("serve", "-h")

    assert result.returncode == 0, result.stderr
    for option in (
        "--socket",
        "--endpoint-url",
        "--region",
        "--addressing-style",
        "--concurrency",
        "--chunk-size",
        "--budget",
        "--ring-size",
        "--cache-size",
        "--cache-dir",
        "--cache-disk-size",
        "--decode-threads",
        "--exit-when-idle",
        "--stall-timeout",
        "--hedge",
        "--no-hedge",
        "--hedge-multiplier",
        "--hedge-min-delay",
        "--hedge-budget",
        "--config",
        "--log-level",
    ):
        assert option in result.stdout, option
    assert "--ready-fd" not in result.stdout and "--detach" not in result.stdout  # hidden: for autostart only
