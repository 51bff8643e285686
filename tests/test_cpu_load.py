"""The fused sampler's reading of the machine's load (pruneopd/engines/cpu_load.py): /proc
parsing worked by hand, the busy-cores arithmetic, the 30 s memory and the override."""

from __future__ import annotations

import pytest

from pruneopd.engines import cpu_load

STAT = "cpu  {u} 0 {s} {i} 0 0 0 0 0 0\ncpu0 1 2 3 4\n"
SELF = "4242 (python (x) 3) S 1 2 3 0 -1 4194304 10 0 0 0 {u} {s} 0 0 20 0 3 0 99\n"


def test_parsing_by_hand():
    assert cpu_load.cpu_ticks("cpu 10 0 5 80 5 0 0 0 0 0") == (15, 100)
    assert cpu_load.cpu_ticks(STAT.format(u=7, s=3, i=90)) == (10, 100)
    # the command name holds spaces and parentheses: fields counted after the last ")"
    assert cpu_load.own_ticks(SELF.format(u=12, s=5)) == 17


def fake_proc(before: tuple[int, int, int, int], after: tuple[int, int, int, int]):
    """(user, system, idle, own ticks) before and after the window."""
    snaps = iter([before, before, after, after])

    def read(path):
        u, s, i, own = next(snaps)
        return STAT.format(u=u, s=s, i=i) if path == "/proc/stat" else SELF.format(u=own, s=0)

    return read


def test_others_busy_cores():
    # 2 cores, 20 ticks each over the window (40 in all): 30 busy, 10 of them this process's
    read = fake_proc((100, 0, 100, 50), (125, 5, 110, 60))
    assert cpu_load.others_busy_cores(read=read, sleep=lambda s: None, cores=2) == 1.0
    # only this process busy: nobody else
    read = fake_proc((100, 0, 100, 50), (120, 0, 120, 70))
    assert cpu_load.others_busy_cores(read=read, sleep=lambda s: None, cores=2) == 0.0

    def unreadable(path):
        raise FileNotFoundError(path)

    assert cpu_load.others_busy_cores(read=unreadable, sleep=lambda s: None) is None


def test_machine_quiet_is_kept_and_can_be_forced(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_load, "_last", [])
    monkeypatch.setattr(cpu_load, "others_busy_cores", lambda: calls.append(1) or 0.2)
    monkeypatch.delenv(cpu_load.ENV, raising=False)
    clock = iter([0.0, 10.0, 31.0])
    assert cpu_load.machine_quiet(now=lambda: next(clock))
    assert cpu_load.machine_quiet(now=lambda: next(clock))  # kept: measured once
    monkeypatch.setattr(cpu_load, "others_busy_cores", lambda: calls.append(1) or 1.3)
    assert not cpu_load.machine_quiet(now=lambda: next(clock))  # 30 s later: measured again
    assert len(calls) == 2
    monkeypatch.setattr(cpu_load, "others_busy_cores", lambda: None)  # /proc unreadable: busy
    assert not cpu_load.machine_quiet(now=lambda: 100.0)
    monkeypatch.setenv(cpu_load.ENV, "on")
    assert cpu_load.machine_quiet()
    monkeypatch.setenv(cpu_load.ENV, "off")
    assert not cpu_load.machine_quiet()
    monkeypatch.setenv(cpu_load.ENV, "sometimes")
    with pytest.raises(ValueError, match="PRUNEOPD_SAMPLING_SPLIT='sometimes'"):
        cpu_load.machine_quiet()


def test_this_machine_answers():
    others = cpu_load.others_busy_cores(window_s=0.02)
    assert others is None or others >= 0.0
