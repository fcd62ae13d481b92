"""The sampler's /proc reader gives psutil's numbers: each field against psutil read just before and just after."""

from __future__ import annotations

import psutil
import pytest

from collectors import procfs
from collectors.host import sample_row
from include.schemas import HOST_SCHEMA

pytestmark = pytest.mark.skipif(not procfs.available(), reason="Linux /proc only")

NAMES = HOST_SCHEMA.names
COUNTERS = ("cpu_ctx_switches", "cpu_interrupts", "cpu_soft_interrupts", "disk_read_bytes", "disk_write_bytes", "disk_read_count",
            "disk_write_count", "net_bytes_sent", "net_bytes_recv", "net_packets_sent", "net_packets_recv",
            "net_errin", "net_errout", "net_dropin", "net_dropout")


def _row(values: list[str]) -> dict[str, str]:
    return dict(zip(NAMES, values, strict=True))


def test_every_counter_lies_between_psutil_before_and_after():
    sampler = procfs.ProcSampler()
    for _ in range(5):  # counters move between the reads; each must fall inside psutil's bracket
        before = _row(sample_row("h", 1_796_000_000))
        ours = _row(sampler("h", 1_796_000_000))
        after = _row(sample_row("h", 1_796_000_000))
        for name in COUNTERS:
            assert int(before[name]) <= int(ours[name]) <= int(after[name]), (name, before[name], ours[name], after[name])


def test_memory_and_swap_as_psutil_counts_them():
    ours = _row(procfs.ProcSampler()("h", 1_796_000_000))
    mem, swap = psutil.virtual_memory(), psutil.swap_memory()
    assert int(ours["mem_total"]) == mem.total and int(ours["swap_total"]) == swap.total
    # The rest moves between two reads; the relations are exact, the values close.
    total, available = int(ours["mem_total"]), int(ours["mem_available"])
    assert int(ours["mem_used"]) == total - available
    assert float(ours["mem_percent"]) == round((total - available) / total * 100, 1)
    for name, theirs in (("mem_available", mem.available), ("mem_free", mem.free), ("swap_used", swap.used)):
        assert abs(int(ours[name]) - theirs) <= 0.02 * total, (name, ours[name], theirs)


def test_cpu_percent_is_the_busy_share_of_the_interval():
    sampler = procfs.ProcSampler()
    # user nice system idle iowait irq softirq steal guest guest_nice
    sampler._cpu = [100, 0, 50, 800, 50, 0, 0, 0, 10, 0]
    assert sampler._cpu_percent([130, 0, 60, 850, 60, 0, 0, 0, 20, 0]) == round((30 + 10) / (30 + 10 + 50 + 10) * 100, 1)
    assert sampler._cpu_percent([130, 0, 60, 850, 60, 0, 0, 0, 20, 0]) == 0.0  # no ticks passed
    live = float(_row(sampler("h", 1_796_000_000))["cpu_usage_percent"])
    assert 0.0 <= live <= 100.0


def test_the_row_has_the_schema_and_the_kinds():
    row = procfs.ProcSampler()("host-1", 1_796_000_000)
    assert len(row) == len(NAMES)
    assert row[:2] == ["2026-11-30T00:53:20Z", "host-1"]
    for column, value in zip(HOST_SCHEMA.columns[2:], row[2:], strict=True):
        (int if column.kind == "int" else float)(value)  # raises on a value of the wrong kind


def test_the_sampler_reads_proc_on_linux(tmp_path):
    from collectors.host import HostConfig, HostSampler

    sampler = HostSampler(HostConfig(landing_url=(tmp_path / "l").as_uri(), state_dir=str(tmp_path / "s"),
                                     metrics_port=-1, heartbeat_interval=0))
    sampler._start()
    try:
        assert isinstance(sampler._sample, procfs.ProcSampler)
    finally:
        sampler._stop()
