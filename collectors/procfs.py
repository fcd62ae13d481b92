"""The host sampler's counters read straight from Linux's /proc: four reads a second instead of psutil's dozen.

The host sampler runs on every host for months, so its own cost is the
product's cost. psutil gives the same numbers portably, but at 1 Hz each of
its calls starts cold and reads again what another call just read
(``/proc/stat`` twice, ``/proc/meminfo`` twice, ``/proc/vmstat`` for swap
figures the sampler does not keep, an ``access`` per block device): about
1.1 ms of CPU a second against 0.13 ms for the four files it needs
(tests/benchmarks/host_bench.py measures the sampler beside collectd).

:class:`ProcSampler` computes every field the way psutil 7 does on Linux
(``cpu_percent`` from the busy share of the ``cpu`` line, memory as ``free``
counts it, disk totals over whole devices, the ones in ``/sys/block``, not
their partitions; network totals over every interface) and
tests/collectors/test_procfs.py holds it to psutil's values read in the same
instant. Elsewhere (macOS, a container without /proc) the sampler uses
psutil (:func:`collectors.host.sample_row`).
"""

from __future__ import annotations

import os

from include.contract import timestamp_text

#: The kernel's sector size in /proc/diskstats, whatever the device's own (psutil's DISK_SECTOR_SIZE).
SECTOR_BYTES = 512


def available() -> bool:
    """Whether this host has the /proc files :class:`ProcSampler` reads."""
    return all(os.access(p, os.R_OK) for p in ("/proc/stat", "/proc/meminfo", "/proc/diskstats", "/proc/net/dev"))


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def _percent(part: float, whole: float) -> float:
    return round(part / whole * 100, 1) if whole else 0.0


class ProcSampler:
    """Callable like :func:`collectors.host.sample_row`: ``(host, second) -> row`` in HOST_SCHEMA order."""

    def __init__(self) -> None:
        self._disks: frozenset[str] = frozenset()
        self._disks_second = -1
        # The reference point of the first cpu_percent, as psutil's first call sets it.
        self._cpu: list[int] = [int(v) for v in _read("/proc/stat").split(b"\n")[0].split()[1:]]

    def __call__(self, host: str, second: int) -> list[str]:
        stat = _read("/proc/stat").split(b"\n")
        cpu_percent = self._cpu_percent([int(v) for v in stat[0].split()[1:]])
        ctxt = intr = softirq = 0
        for line in stat:
            if line.startswith(b"ctxt "):
                ctxt = int(line[5:])
            elif line.startswith(b"intr "):
                intr = int(line[5:].split(b" ", 1)[0])
            elif line.startswith(b"softirq "):
                softirq = int(line[8:].split(b" ", 1)[0])
        mem = {}
        for line in _read("/proc/meminfo").split(b"\n"):
            name, _, value = line.partition(b":")
            if value:
                mem[name] = int(value.split()[0]) * 1024
        total, free = mem[b"MemTotal"], mem[b"MemFree"]
        available_ = mem.get(b"MemAvailable", free)
        swap_total, swap_free = mem.get(b"SwapTotal", 0), mem.get(b"SwapFree", 0)
        load = os.getloadavg()
        row = [
            timestamp_text(second), host, str(cpu_percent),
            str(ctxt), str(intr), str(softirq), "0",  # Linux counts no syscalls (psutil reports 0 too)
            str(total), str(available_), str(_percent(total - available_, total)), str(total - available_), str(free),
            f"{load[0]:.2f}", f"{load[1]:.2f}", f"{load[2]:.2f}",
            str(swap_total), str(swap_total - swap_free), str(_percent(swap_total - swap_free, swap_total)),
        ]
        return row + self._disk(second) + self._net()

    def _cpu_percent(self, times: list[int]) -> float:
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time is inside user
        # and nice already, idle and iowait are not busy (psutil's _cpu_tot_time, _cpu_busy_time).
        previous, self._cpu = self._cpu, times
        delta = [max(0, now - then) for now, then in zip(times, previous, strict=True)]
        total = sum(delta) - sum(delta[8:10])
        busy = total - delta[3] - (delta[4] if len(delta) > 4 else 0)
        return _percent(busy, total)

    def _disk(self, second: int) -> list[str]:
        if second // 60 != self._disks_second // 60:  # devices come and go rarely: look once a minute
            self._disks = frozenset(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else frozenset()
            self._disks_second = second
        read_bytes = write_bytes = reads = writes = 0
        for line in _read("/proc/diskstats").split(b"\n"):
            fields = line.split()
            if len(fields) < 14 or fields[2].decode().replace("/", "!") not in self._disks:
                continue
            reads += int(fields[3])
            read_bytes += int(fields[5]) * SECTOR_BYTES
            writes += int(fields[7])
            write_bytes += int(fields[9]) * SECTOR_BYTES
        return [str(read_bytes), str(write_bytes), str(reads), str(writes)]

    @staticmethod
    def _net() -> list[str]:
        sums = [0] * 16
        for line in _read("/proc/net/dev").split(b"\n")[2:]:
            _, colon, counters = line.rpartition(b":")
            if colon:
                for i, value in enumerate(counters.split()):
                    sums[i] += int(value)
        # bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout
        return [str(sums[i]) for i in (8, 0, 9, 1, 2, 10, 3, 11)]
