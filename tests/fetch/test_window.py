"""The fetch window: Little's law over the latency the open measured, within the ring's bounds."""

from __future__ import annotations

from typing import Any, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefetchd.fetch.window import Window, first_byte_seconds, plan_window

MiB = 1 << 20


class Link(TypedDict):
    connections: int
    connection_bytes_per_s: float


LINK = Link(connections=32, connection_bytes_per_s=90e6)


def unbounded(ttfb_s: float, **options: Any) -> Window:
    """The window with no bounds of its own: what the latency, the target and the link call for."""
    return plan_window(ttfb_s, min_window_bytes=1, max_window_bytes=1 << 40, **options)


def test_a_near_endpoint_gets_the_least_window_cut_over_every_connection() -> None:
    window = plan_window(0.0, target_bytes_per_s=1.5e9, min_window_bytes=64 * MiB, max_window_bytes=256 * MiB, **LINK)
    assert (window.window_bytes, window.piece_bytes) == (64 * MiB, 2 * MiB)


def test_the_window_solves_littles_law_with_the_piece_it_cuts() -> None:
    # W = T × ttfb / (1 - T / (n × pace)) = 1.5e9 × 0.03 / (1 - 1.5e9 / 2.88e9) = 93,913,043 bytes
    window = plan_window(0.03, target_bytes_per_s=1.5e9, min_window_bytes=MiB, max_window_bytes=1 << 30, **LINK)
    assert window.window_bytes == 93_913_043
    assert window.piece_bytes == 2_934_783  # 32 GETs of this cover it


def test_a_far_endpoint_is_capped_by_the_ring_it_may_have() -> None:
    window = plan_window(0.1, target_bytes_per_s=1.5e9, min_window_bytes=64 * MiB, max_window_bytes=240 * MiB, **LINK)
    assert window.window_bytes == 240 * MiB


def test_a_target_the_connections_cannot_reach_takes_the_whole_allowance() -> None:
    window = plan_window(0.001, target_bytes_per_s=3e9, min_window_bytes=MiB, max_window_bytes=100 * MiB, **LINK)
    assert window.window_bytes == 100 * MiB


@given(
    ttfb_s=st.floats(0.0005, 0.5),
    target=st.floats(1e6, 2.8e9),
    connections=st.integers(1, 128),
)
def test_the_planned_window_moves_the_target_unless_a_bound_says_otherwise(
    ttfb_s: float, target: float, connections: int
) -> None:
    pace = 90e6
    if target >= connections * pace:
        target = connections * pace * 0.9
    window = unbounded(ttfb_s, target_bytes_per_s=target, connections=connections, connection_bytes_per_s=pace)
    moved = window.window_bytes / (ttfb_s + window.piece_bytes / pace)  # Little's law at that piece size
    assert moved == pytest.approx(target, rel=1e-3, abs=pace)
    assert window.piece_bytes * connections >= window.window_bytes


def test_a_late_range_s_wait_is_covered_as_well() -> None:
    # hedging's deadline of 50 ms on top of a 30 ms first byte: W = 1.5e9 × 0.08 / (1 - 1.5e9 / 2.88e9)
    window = plan_window(
        0.03, late_s=0.05, target_bytes_per_s=1.5e9, min_window_bytes=MiB, max_window_bytes=1 << 30, **LINK
    )
    assert window.window_bytes == 250_434_782
    assert window.piece_bytes == 7_826_087


def test_pieces_at_their_largest_leave_the_rest_of_the_window_as_buffer() -> None:
    # uncapped, 32 pieces of 12.7 MB; at most 8 MiB each, a GET takes 30 ms + 93 ms, and the window is what
    # moves at the target meanwhile plus the 100 ms a late range waits: 1.5e9 × (0.03 + 0.1 + 8 MiB / 90e6)
    window = plan_window(
        0.03,
        late_s=0.1,
        max_piece_bytes=8 * MiB,
        target_bytes_per_s=1.5e9,
        min_window_bytes=MiB,
        max_window_bytes=1 << 30,
        **LINK,
    )
    assert window.window_bytes == 334_810_133
    assert window.piece_bytes == 8 * MiB


def test_pieces_too_small_for_the_target_take_the_whole_allowance() -> None:
    # 32 GETs of 1 MiB at 30 ms move at most 32 × 1 MiB / (0.03 + 0.0117) s ≈ 805 MB/s
    window = plan_window(
        0.03, max_piece_bytes=MiB, target_bytes_per_s=1e9, min_window_bytes=MiB, max_window_bytes=300 * MiB, **LINK
    )
    assert window.window_bytes == 300 * MiB


@given(
    ttfb_s=st.floats(0.0005, 0.5),
    late_s=st.floats(0.0, 1.0),
    target=st.floats(1e6, 2.8e9),
    max_piece=st.integers(64 * 1024, 64 * MiB),
)
def test_the_window_holds_the_gets_in_flight_and_what_moves_while_a_range_is_late(
    ttfb_s: float, late_s: float, target: float, max_piece: int
) -> None:
    pace, connections = LINK["connection_bytes_per_s"], LINK["connections"]
    window = unbounded(ttfb_s, late_s=late_s, max_piece_bytes=max_piece, target_bytes_per_s=target, **LINK)
    assert window.piece_bytes <= max_piece
    if target * (ttfb_s + max_piece / pace) >= connections * max_piece:  # no piece size moves the target
        assert window.window_bytes == 1 << 40
    else:
        in_flight = target * (ttfb_s + window.piece_bytes / pace)  # Little's law at the piece it cut
        assert window.window_bytes == pytest.approx(in_flight + target * late_s, rel=1e-3, abs=pace)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_more_latency_never_means_a_smaller_window(a: float, b: float) -> None:
    def planned(ttfb_s: float) -> int:
        return plan_window(
            ttfb_s, target_bytes_per_s=1e9, min_window_bytes=MiB, max_window_bytes=512 * MiB, **LINK
        ).window_bytes

    assert planned(min(a, b)) <= planned(max(a, b))


def test_the_first_byte_is_the_get_less_its_body() -> None:
    assert first_byte_seconds(0.04, 900_000, 90e6) == pytest.approx(0.03)
    assert first_byte_seconds(0.001, 9_000_000, 90e6) == 0.0  # faster than the assumed pace: no latency at all


@pytest.mark.parametrize(
    "changes",
    [
        {"connections": 0},
        {"connection_bytes_per_s": 0.0},
        {"min_window_bytes": 2, "max_window_bytes": 1},
        {"max_piece_bytes": 0},
    ],
)
def test_nonsense_bounds_are_refused(changes: dict[str, float]) -> None:
    arguments = {"target_bytes_per_s": 1e9, "min_window_bytes": 1, "max_window_bytes": 2, **LINK, **changes}
    with pytest.raises(ValueError, match="plan_window needs"):
        plan_window(0.01, **arguments)  # type: ignore[arg-type]
