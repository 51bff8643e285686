"""How the fused sampler runs A samples on its threads: the groups of `FusedDecoder.sample_steps`
(`pruneopd.engines.fused`), chosen from the bytes each decode step streams from memory.

Pure arithmetic on sizes (no model, no extension), so it is tested by hand
(tests/test_fused.py) and the sampler's start-up line quotes its reason (`Plan.why`).
"""

from __future__ import annotations

from dataclasses import dataclass

# samples per group in `FusedDecoder.sample_steps`: a group runs all its steps of a call
# before the next group starts, so its KV cache stays in the CPU caches between tokens
SAMPLE_GROUP = 4
# weights up to this size stay in the CPU caches (L2 + a share of L3) from one group's step to
# the next: the zoo's models (<= 4 MB) do, a real model (>= 100 MB) is streamed from memory
CACHED_WEIGHT_BYTES = 32 << 20


@dataclass(frozen=True)
class Plan:
    """How `sample_steps` runs A samples: groups of `group` rows, spread over the threads
    (split False) or one after the other with each step split over them (split True)."""

    group: int
    split: bool
    why: str


def _size(n: int) -> str:
    """Bytes in binary units: 0 B, 512 KiB, 3.9 MiB, 311 MiB, 1.2 GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def plan_sampling(
    weight_bytes: int, kv_bytes_per_sample: int, A: int, threads: int, quiet: bool = False
) -> Plan:
    """The groups of A samples on `threads` threads, from the bytes one decode step streams
    from memory: the weights (every projection and the head, read once per group: free while
    they fit the CPU caches) and the KV cache (one sample's at full length, every layer: free
    while a group's fits the caches, kept there between the group's tokens).

    Candidates, each spread over the threads (a thread runs its groups all n steps at once,
    with no synchronisation between threads inside a block):
    - groups of SAMPLE_GROUP (the zoo's models: their tokens are pinned by the golden runs,
      and this wins any tie);
    - one group per thread (ceil(A / threads) samples): each thread reads every weight once
      per step.
    With fewer samples than threads, or on a `quiet` machine (no other process busy:
    `cpu_load.machine_quiet`), one split group (each step's columns, attention units and picks
    shared by the threads, every weight read once per step) when the weights are streamed.
    Measured on the SmolLM2 student (docs/benchmarks.md 10): quiet, the split group 1.15-1.21x
    one group per thread; under load, one group per thread 1.6-2x the split group, which waits
    at ~80 barriers per step for threads the other processes hold."""
    threads = max(1, threads)
    cached = weight_bytes <= CACHED_WEIGHT_BYTES

    def streamed(group: int) -> int:
        """Bytes from memory per step of the busiest thread."""
        n_groups = -(-A // group)
        per_thread = -(-n_groups // threads)
        weights = 0 if cached else per_thread * weight_bytes
        kv = group * kv_bytes_per_sample
        return weights + per_thread * (0 if kv <= CACHED_WEIGHT_BYTES else kv)

    if not cached and A < threads:
        return Plan(
            A,
            True,
            f"weights {_size(weight_bytes)} streamed from memory and {A} sample(s) for "
            f"{threads} threads: each step split over the threads",
        )
    per_thread = -(-A // threads)
    small, large = streamed(SAMPLE_GROUP), streamed(per_thread)
    if quiet and not cached and threads > 1:
        kv_all = A * kv_bytes_per_sample
        split = -(-(weight_bytes + (0 if kv_all <= CACHED_WEIGHT_BYTES else kv_all)) // threads)
        if split <= min(small, large):
            return Plan(
                A,
                True,
                f"weights {_size(weight_bytes)} streamed from memory and no other process "
                f"busy: one split group streams {_size(split)} per step and thread, one group "
                f"per thread {_size(large)}",
            )
    if small < large or (small == large and cached):
        return Plan(
            SAMPLE_GROUP,
            False,
            f"weights {_size(weight_bytes)}"
            f"{' (they stay in the CPU caches)' if cached else ''}: groups of {SAMPLE_GROUP} "
            f"stream {_size(small)} per step and thread, one group per thread {_size(large)}",
        )
    return Plan(
        per_thread,
        False,
        f"weights {_size(weight_bytes)} streamed from memory: one group per thread "
        f"streams {_size(large)} per step and thread, groups of {SAMPLE_GROUP} "
        f"{_size(small)}",
    )
