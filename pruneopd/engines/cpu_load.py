"""Is another process using the CPU right now? The fused sampler's plan depends on it.

On a real model the weights are streamed from memory at every decode step. One split group
(each step's projections shared column-wise by the threads) reads every weight once per step
but meets the other threads at ~80 barriers a step; one group per thread reads every weight
once per thread and meets nobody. On a quiet machine the split group is faster (SmolLM2
student, 2 threads: 1.15x at 8 samples, 1.21x at 32, docs/benchmarks.md 10); when another
process holds a core, each barrier waits for a time slice and it is 1.6-2x slower. So the
sampler measures, over a tenth of a second, how many cores the other processes keep busy
(Linux's /proc/stat less this process's /proc/self/stat), and keeps the answer for 30 s.

`PRUNEOPD_SAMPLING_SPLIT=on|off` forces the choice (e.g. for the same plan on every run);
`auto` (the default) measures. Where /proc cannot be read the machine counts as busy (the
plan that never waits for another process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

ENV = "PRUNEOPD_SAMPLING_SPLIT"
QUIET_BELOW = 0.5  # cores the other processes may keep busy for the machine to count as quiet
WINDOW_S = 0.1
KEEP_S = 30.0
_last: list[tuple[float, bool]] = []  # (when measured, quiet), the latest only


def cpu_ticks(stat_text: str) -> tuple[int, int]:
    """(busy, total) clock ticks over all CPUs from the first line of /proc/stat:
    `cpu user nice system idle iowait irq softirq steal ...`; idle and iowait are not busy.

    Example: "cpu 10 0 5 80 5 0 0 0 0 0" -> (15, 100).
    """
    values = [int(v) for v in stat_text.split("\n", 1)[0].split()[1:9]]
    total = sum(values)
    return total - values[3] - values[4], total


def own_ticks(self_stat_text: str) -> int:
    """This process's user + system clock ticks (fields 14 and 15 of /proc/self/stat, counted
    after the command name, which may hold spaces or parentheses)."""
    rest = self_stat_text[self_stat_text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def others_busy_cores(
    window_s: float = WINDOW_S,
    read: Callable[[str], str] = _read,
    sleep: Callable[[float], None] = time.sleep,
    cores: int | None = None,
) -> float | None:
    """Cores the other processes kept busy over `window_s` seconds, or None where /proc
    cannot be read. This process sleeps meanwhile, so what it used (OpenMP threads still
    spinning) is subtracted."""
    cores = cores or os.cpu_count() or 1
    try:
        busy0, total0 = cpu_ticks(read("/proc/stat"))
        mine0 = own_ticks(read("/proc/self/stat"))
        sleep(window_s)
        busy1, total1 = cpu_ticks(read("/proc/stat"))
        mine1 = own_ticks(read("/proc/self/stat"))
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    per_core = (total1 - total0) / cores  # ticks of one core over the window
    return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / per_core


def machine_quiet(now: Callable[[], float] = time.monotonic) -> bool:
    """Whether the other processes leave the cores free (`others_busy_cores` < QUIET_BELOW),
    measured at most every KEEP_S seconds; PRUNEOPD_SAMPLING_SPLIT=on / off forces it."""
    forced = os.environ.get(ENV, "auto").strip().lower()
    if forced in ("on", "1", "true"):
        return True
    if forced in ("off", "0", "false"):
        return False
    if forced != "auto":
        raise ValueError(f"{ENV}={forced!r}: use auto, on or off")
    t = now()
    if _last and t - _last[0][0] < KEEP_S:
        return _last[0][1]
    others = others_busy_cores()
    quiet = others is not None and others < QUIET_BELOW
    _last[:] = [(t, quiet)]
    return quiet
