"""Shared measuring helpers for the benchmarks."""
from __future__ import annotations

import os
from pathlib import Path


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a running process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far; 0 if it is gone.
    Differences of it are firmer than throughput on a machine whose speed swings: a slow moment
    stretches the wall clock, not much the work done per message."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    # utime and stime are the 12th and 13th fields after the command name.
    return (int(fields[11]) + int(fields[12])) / _TICKS if fields else 0.0


def _stat_fields(stat: Path) -> list[str]:
    """A process's /proc stat fields after its command name (which may hold spaces and
    parentheses); [] if the process is gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def with_descendants(pid: int) -> list[int]:
    """The process and every process it started, and theirs (the connectors' bulk extract
    workers parse and encode large files: their CPU is the connector's)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields:
            parents[int(stat.parent.name)] = int(fields[1])     # the parent's pid
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


class CpuMeter:
    """CPU seconds used by named processes between `start` and `stop`."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in ps) for name, ps in self.pids.items()}

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        self.used = {name: t - self._start.get(name, 0.0) for name, t in self._now().items()}
        return self.used

    def per_message(self, messages: int, outside: tuple[str, ...] = ()) -> str:
        """'name 123 · ... · total N µs', CPU microseconds per message; with `outside` (processes
        that are not the system measured, such as a load generator), also the total without them."""
        n = max(messages, 1)
        parts = [f"{name} {t / n * 1e6:,.0f}" for name, t in self.used.items()]
        total = f"total {sum(self.used.values()) / n * 1e6:,.0f} µs"
        if outside:
            inside = sum(t for name, t in self.used.items() if name not in outside)
            total += f" ({inside / n * 1e6:,.0f} without the {' and '.join(outside)})"
        return " · ".join(parts + [total])


def bus_cpu(settings, services: dict[str, list[int]]) -> CpuMeter:  # noqa: ANN001 - foundation Settings
    """A CPU meter over the bus's servers (Kafka, Redis) and the given processes."""
    from carebus import kafka_server, redis_server

    brokers = [p for p in kafka_server.pids(settings).values() if p]
    return CpuMeter({**services, "Kafka": brokers, "Redis": [p for p in [redis_server.pid(settings)] if p]})
