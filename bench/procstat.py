"""CPU-seconds of the farm's processes, from /proc, for the benchmarks (issue 19 item 4).

``cpu_seconds(pid)`` is user + system time of a process and of the children it has
reaped (buildkitd reaps the runc processes that run each step, so their time counts as
the daemon's). /proc counts in clock ticks (10 ms here): per-package numbers are taken as
the total over many packages divided by their number, not as a median of coarse deltas.

``farm_pids`` finds the farm's buildkitd and registry by the TCP port they listen on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self", *, children: bool = True) -> float:
    """utime + stime (and the reaped children's, if asked) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the ")" of comm: state is field 3, so utime (14) is index 11
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICK


def _listener(port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def farm_pids(buildkit_addr: str, registry: str) -> dict[str, int]:
    """``{"buildkitd": pid, "registry": pid}``: the processes listening at the daemon's
    ``tcp://`` address and at the registry's ``host:port``; a part not found is left out."""
    found: dict[str, int] = {}
    for name, port in (("buildkitd", _port(buildkit_addr)), ("registry", _port(registry))):
        pid = _listener(port)
        if pid is not None:
            found[name] = pid
    return found


@dataclass(frozen=True)
class Snapshot:
    """CPU-seconds so far of each named process."""

    values: Mapping[str, float]

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> Snapshot:
        return cls({name: cpu_seconds(pid) for name, pid in pids.items()})

    def since(self, earlier: Snapshot) -> dict[str, float]:
        return {k: v - earlier.values.get(k, 0.0) for k, v in self.values.items()}
