"""CPU time, memory and command lines of a process and its descendants, read from /proc.

Linux only, as the bench's memory probe. A process's CPU here includes its waited-for
children's (`cutime`/`cstime`), so the seconds of a child that ended and was reaped by a
process of the tree stay counted.
"""

from __future__ import annotations

import os
from typing import NamedTuple

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProcStat(NamedTuple):
    ppid: int
    cpu_s: float  # user + system, its own and its reaped children's
    rss: int  # bytes


def stat(pid: int) -> ProcStat | None:
    """None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    # After the command name in parentheses: field 3 (state) is index 0.
    f = data.rsplit(")", 1)[1].split()
    ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ProcStat(int(f[1]), ticks / TICK, int(f[21]) * PAGE)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def tree(root: int) -> dict[int, ProcStat]:
    """`root` and all its descendants, by pid."""
    stats: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = stat(int(name))
            if found is not None:
                stats[int(name)] = found
    children: dict[int, list[int]] = {}
    for pid, s in stats.items():
        children.setdefault(s.ppid, []).append(pid)
    out: dict[int, ProcStat] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid]
            todo += children.get(pid, [])
    return out
