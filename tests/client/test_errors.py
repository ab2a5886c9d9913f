"""The error tree: each class crosses the socket (to_wire/error_from_wire) and process boundaries (pickle) intact."""

from __future__ import annotations

import pickle

import pytest

from prefetchd_client import errors
from prefetchd_client.errors import (
    ERROR_CLASSES,
    DaemonError,
    LocalProtocolError,
    ObjectNotFound,
    PrefetchdError,
    ProtocolError,
    RemoteProtocolError,
    error_from_wire,
)

URL = "s3://bucket/train-images-idx3-ubyte"
OFFSET = 16 + 784 * 7  # the 8th image of an IDX file


class LateSubclass(PrefetchdError):
    """A subclass defined outside errors.py, after ERROR_CLASSES was built (as the daemon's ConfigError is)."""

    code = "late_subclass"


def every_subclass(cls: type[PrefetchdError]) -> list[type[PrefetchdError]]:
    """`cls` and everything below it, found by walking the tree rather than from ERROR_CLASSES."""
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(every_subclass(sub))
    return found


LIBRARY_CLASSES = [cls for cls in every_subclass(PrefetchdError) if cls.__module__ == errors.__name__]


def test_error_classes_holds_every_library_class_but_the_base_by_its_code() -> None:
    expected = {cls.code: cls for cls in LIBRARY_CLASSES if cls is not PrefetchdError}
    assert expected == ERROR_CLASSES
    assert len(ERROR_CLASSES) == len(LIBRARY_CLASSES) - 1  # no two classes collapsed onto one code


def test_every_class_has_a_unique_code() -> None:
    codes = [cls.code for cls in ERROR_CLASSES.values()]
    assert len(codes) == len(set(codes))
    assert all(code and code == code.lower() and " " not in code for code in codes)


def test_the_base_shares_its_code_only_with_daemon_error() -> None:
    # a bare PrefetchdError on the wire means "something unexpected": the client raises DaemonError for it
    assert PrefetchdError.code == DaemonError.code == "internal"
    assert type(error_from_wire(PrefetchdError("boom").to_wire())) is DaemonError


@pytest.mark.parametrize("cls", LIBRARY_CLASSES, ids=lambda cls: cls.__name__)
def test_every_class_has_a_docstring(cls: type[PrefetchdError]) -> None:
    assert "__doc__" in vars(cls) and cls.__doc__ and cls.__doc__.strip()


@pytest.mark.parametrize("cls", ERROR_CLASSES.values(), ids=lambda cls: cls.__name__)
def test_every_class_round_trips_through_the_wire_as_itself(cls: type[PrefetchdError]) -> None:
    original = cls("what happened, to what, and what to do", url=URL, offset=OFFSET)
    wire = original.to_wire()
    assert wire == {"code": cls.code, "message": "what happened, to what, and what to do", "url": URL, "offset": OFFSET}
    rebuilt = error_from_wire(wire, sent_by_peer=False)
    assert type(rebuilt) is cls
    assert (rebuilt.message, rebuilt.url, rebuilt.offset) == (original.message, original.url, original.offset)
    assert str(rebuilt) == original.message


@pytest.mark.parametrize(
    "cls",
    [cls for cls in ERROR_CLASSES.values() if not issubclass(cls, ProtocolError)],
    ids=lambda cls: cls.__name__,
)
def test_a_peers_error_comes_back_as_the_class_it_named(cls: type[PrefetchdError]) -> None:
    assert type(error_from_wire(cls("x").to_wire())) is cls


@pytest.mark.parametrize("code", ["protocol_error", "remote_protocol_error"])
def test_a_peer_saying_we_broke_the_protocol_is_a_local_protocol_error(code: str) -> None:
    error = error_from_wire({"code": code, "message": "expected a hello frame first, got open"})
    assert type(error) is LocalProtocolError
    assert error.message == "expected a hello frame first, got open"


def test_a_peer_owning_up_to_its_own_protocol_error_is_a_remote_protocol_error() -> None:
    error = error_from_wire(LocalProtocolError("we sent a bad frame").to_wire())
    assert type(error) is RemoteProtocolError


def test_protocol_errors_keep_their_class_when_not_from_a_peer() -> None:
    assert type(error_from_wire({"code": "protocol_error", "message": ""}, sent_by_peer=False)) is ProtocolError


@pytest.mark.parametrize("code", ["no_such_code", "config_error", "", "INTERNAL"])
def test_an_unknown_code_becomes_a_daemon_error_keeping_the_message(code: str) -> None:
    error = error_from_wire({"code": code, "message": "the daemon's words", "url": URL, "offset": OFFSET})
    assert type(error) is DaemonError
    assert (error.message, error.url, error.offset) == ("the daemon's words", URL, OFFSET)


def test_missing_or_mistyped_wire_fields_do_not_break_the_rebuild() -> None:
    assert type(error_from_wire({})) is DaemonError
    error = error_from_wire({"code": "object_not_found", "message": 7, "url": ["x"], "offset": "12"})
    assert type(error) is ObjectNotFound
    assert (error.message, error.url, error.offset) == ("7", None, None)


@pytest.mark.parametrize("cls", [PrefetchdError, *ERROR_CLASSES.values(), LateSubclass], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_errors_unpickle_as_the_same_class_with_the_same_fields(cls: type[PrefetchdError], protocol: int) -> None:
    original = cls("it broke", url=URL, offset=OFFSET)
    rebuilt = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(rebuilt) is cls
    assert (rebuilt.message, rebuilt.url, rebuilt.offset) == (original.message, original.url, original.offset)
    assert rebuilt.args == original.args
    assert str(rebuilt) == "it broke"


def test_an_error_without_a_location_pickles_without_one() -> None:
    rebuilt = pickle.loads(pickle.dumps(ObjectNotFound("gone")))
    assert (rebuilt.url, rebuilt.offset) == (None, None)


def test_every_class_is_a_prefetchd_error_and_protocol_errors_share_a_parent() -> None:
    assert all(issubclass(cls, PrefetchdError) for cls in ERROR_CLASSES.values())
    assert issubclass(LocalProtocolError, ProtocolError) and issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
