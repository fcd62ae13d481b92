"""Burrow-style lag evaluation: table-driven over windows of checks."""

from __future__ import annotations

import pytest

from include.kafka_lag import (
    GroupReport, LagState, Observation, PartitionOffsets, PartitionWindow, Status, evaluate, group_status,
)

SIZE = 5


def window(*points: tuple[int | None, int]) -> PartitionWindow:
    """(committed, lag) per check, one minute apart."""
    return PartitionWindow([Observation(60.0 * i, c, lag) for i, (c, lag) in enumerate(points)])


@pytest.mark.parametrize(
    ("points", "active", "expected"),
    [
        pytest.param([(10, 0)] * 5, True, Status.OK, id="caught-up"),
        pytest.param([(0, 0)] * 5, False, Status.OK, id="idle-topic-zero-lag-no-members-is-not-stop"),
        pytest.param([(10, 5), (12, 3), (15, 0), (15, 4), (16, 6)], True, Status.OK, id="lag-reached-zero-in-window"),
        pytest.param([(10, 5), (20, 8), (30, 9), (40, 12), (50, 12)], True, Status.WARN, id="advancing-lag-never-shrinks"),
        pytest.param([(10, 5), (20, 8), (30, 4), (40, 12), (50, 12)], True, Status.OK, id="advancing-lag-shrinks-once"),
        pytest.param([(10, 5), (10, 6), (10, 9), (10, 9), (10, 12)], True, Status.STALL, id="members-but-offset-frozen"),
        pytest.param([(10, 5)] * 5, False, Status.STOP, id="no-members-offset-frozen"),
        pytest.param([(10, 5)] * 4, False, Status.OK, id="frozen-but-window-not-full-yet"),
        pytest.param([(10, 5), (20, 5), (15, 10), (16, 9), (17, 8)], True, Status.REWIND, id="offset-went-back"),
        pytest.param([(None, 7)] * 5, False, Status.STOP, id="never-committed-with-lag"),
        pytest.param([], True, Status.OK, id="no-checks"),
    ],
)
def test_evaluate(points, active, expected):
    assert evaluate(window(*points), size=SIZE, group_active=active) is expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        pytest.param([Status.OK, Status.OK], Status.OK, id="all-ok"),
        pytest.param([Status.OK, Status.WARN], Status.WARN, id="warn"),
        pytest.param([Status.REWIND, Status.OK], Status.WARN, id="rewind-warns"),
        pytest.param([Status.WARN, Status.STALL], Status.ERR, id="stall-errs"),
        pytest.param([Status.STOP], Status.ERR, id="stop-errs"),
        pytest.param([], Status.OK, id="no-partitions"),
    ],
)
def test_group_status(statuses, expected):
    assert group_status(statuses) is expected


def test_partition_lag_counts_from_log_start_when_never_committed():
    assert PartitionOffsets("t", 0, None, log_end=30, log_start=10).lag == 20
    assert PartitionOffsets("t", 0, 25, log_end=30, log_start=10).lag == 5


def test_state_round_trips_and_keeps_only_the_window():
    state = LagState()
    for minute in range(8):
        state.observe("g", [PartitionOffsets("t", 0, 10, 15, 0)], at=60.0 * minute, size=SIZE, active_members=1)
    restored = LagState.from_json(state.to_json())
    obs = restored.windows["g"]["t/0"].observations
    assert [o.at for o in obs] == [180.0, 240.0, 300.0, 360.0, 420.0]
    report = restored.observe("g", [PartitionOffsets("t", 0, 10, 15, 0)], at=480.0, size=SIZE, active_members=1)
    assert report.status is Status.ERR
    assert report.partitions[0].status is Status.STALL


def test_problems_name_group_topic_and_partitions():
    state = LagState()
    offsets = [PartitionOffsets("orders", 0, 10, 15, 0), PartitionOffsets("orders", 1, 3, 3, 0)]
    report: GroupReport | None = None
    for minute in range(SIZE):
        report = state.observe("billing", offsets, at=60.0 * minute, size=SIZE, active_members=0)
    assert report is not None
    assert report.problems(lag_threshold=4) == [
        "group billing: STOP on orders[0] (lag 5, committed 10)",
        "group billing: lag above 4 on orders[0]=5",
    ]
    assert report.to_dict()["partitions"][1]["status"] == "OK"
