"""Which values of the training configuration are valid: ranges, choices and combinations of
keys, checked when a `TrainConfig` is built (before any compute). `validate` raises
`ConfigError` naming the first bad key and value, in one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pruneopd.errors import ConfigError

if TYPE_CHECKING:
    from pruneopd.config import TrainConfig

PREFIX_SCHEDULES = ("auto", "fixed", "linear", "adaptive")
LOSSES = ("sampled_rkl", "topk_rkl", "full_rkl", "forward_kl", "jsd")
DRIFT_METRICS = ("topk_overlap", "teacher_top_p_accept")
ON_NONFINITE = ("stop", "skip")
DTYPES = ("float32", "bfloat16", "float16")
PARALLEL = ("ddp", "fsdp")
ROLLOUT_ENGINES = ("lean", "vllm")
TEACHER_ENGINES = ("hf", "vllm")
LORA_SAVE = ("merged", "adapter")


def _need(ok: bool, key: str, value, what: str):
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r}: {what}")


def validate(c: TrainConfig) -> None:
    """Check ranges and choices; raises ConfigError naming the first bad key."""
    from pruneopd.method import METHODS  # the method classes' registration

    _need(c.method in METHODS, "method", c.method, f"must be one of {', '.join(METHODS)}")
    _need(c.loss in LOSSES, "loss", c.loss, f"must be one of {', '.join(LOSSES)}")
    _need(
        c.drift_metric in DRIFT_METRICS,
        "drift_metric",
        c.drift_metric,
        f"must be one of {', '.join(DRIFT_METRICS)}",
    )
    _need(
        c.prefix_schedule in PREFIX_SCHEDULES,
        "prefix_schedule",
        c.prefix_schedule,
        f"must be one of {', '.join(PREFIX_SCHEDULES)}",
    )
    _need(c.gate_norm in ("std", "none"), "gate_norm", c.gate_norm, "must be std or none")
    _need(0 <= c.gate_floor < 1, "gate_floor", c.gate_floor, "must be in [0, 1)")
    _need(c.gate_coef >= 0, "gate_coef", c.gate_coef, "must be >= 0")
    _need(c.iw_gamma >= 0, "iw_gamma", c.iw_gamma, "must be >= 0")
    _need(c.iw_eps > 0, "iw_eps", c.iw_eps, "must be > 0")
    _need(c.window_min >= 1, "window_min", c.window_min, "must be >= 1")
    _need(c.window_step >= 0, "window_step", c.window_step, "must be >= 0")
    _need(
        c.window_probe_every >= 0,
        "window_probe_every",
        c.window_probe_every,
        "must be >= 0 (0 = never probe)",
    )
    _need(
        0 <= c.window_tail_share <= 1, "window_tail_share", c.window_tail_share, "must be in [0, 1]"
    )
    if c.method == "window":  # the window's bounds (other methods ignore them)
        _need(
            c.window_min <= c.window_len <= c.max_len,
            "window_len",
            c.window_len,
            f"must be within [window_min, max_len] = [{c.window_min}, {c.max_len}]",
        )
    _need(c.auto_probe_steps >= 1, "auto_probe_steps", c.auto_probe_steps, "must be >= 1")
    _need(0 <= c.auto_drop <= 1, "auto_drop", c.auto_drop, "must be in [0, 1]")
    _need(c.auto_bucket >= 1, "auto_bucket", c.auto_bucket, "must be >= 1")
    _need(c.auto_persist >= 1, "auto_persist", c.auto_persist, "must be >= 1")
    _need(c.auto_audit_every >= 0, "auto_audit_every", c.auto_audit_every, "must be >= 0")
    _need(0 <= c.auto_tail_share <= 1, "auto_tail_share", c.auto_tail_share, "must be in [0, 1]")
    _need(c.auto_iw_gamma >= 0, "auto_iw_gamma", c.auto_iw_gamma, "must be >= 0")
    _need(c.prefix_window >= 2, "prefix_window", c.prefix_window, "must be >= 2")
    _need(c.prefix_step >= 1, "prefix_step", c.prefix_step, "must be >= 1")
    _need(c.prefix_kl_threshold >= 0, "prefix_kl_threshold", c.prefix_kl_threshold, "must be >= 0")
    _need(c.prefix_flat >= 0, "prefix_flat", c.prefix_flat, "must be >= 0")
    if c.prefix_schedule == "linear":
        _need(
            c.prefix_len_end > 0,
            "prefix_len_end",
            c.prefix_len_end,
            "must be > 0 with prefix_schedule=linear",
        )
    _need(0 <= c.jsd_beta <= 1, "jsd_beta", c.jsd_beta, "must be in [0, 1]")
    for key in (
        "max_steps",
        "prompts_per_step",
        "responses_per_prompt",
        "topk",
        "max_len",
        "min_len",
        "init_len",
        "patience",
        "prefix_len",
        "chunk_size",
    ):
        _need(getattr(c, key) >= 1, key, getattr(c, key), "must be >= 1")
    _need(c.drift_k <= c.topk, "drift_k", c.drift_k, f"must be <= topk ({c.topk})")
    for key in (
        "loss_chunk",
        "drift_k",
        "warmup_steps",
        "eval_every",
        "eval_samples",
        "eval_batch",
        "eval_max_len",
        "log_samples",
        "budget_step",
        "budget_margin",
        "prefix_len_end",
        "difficulty",
        "seed",
    ):
        _need(getattr(c, key) >= 0, key, getattr(c, key), "must be >= 0")
    _need(c.eval_problems >= 1, "eval_problems", c.eval_problems, "must be >= 1")
    _need(c.lr > 0, "lr", c.lr, "must be > 0")
    _need(c.temperature > 0, "temperature", c.temperature, "must be > 0 for on-policy sampling")
    _need(0 < c.top_p <= 1, "top_p", c.top_p, "must be in (0, 1]")
    _need(0 < c.tau <= 1, "tau", c.tau, "must be in (0, 1]")
    _need(c.w_drop >= 0, "w_drop", c.w_drop, "must be >= 0")
    _need(c.w_base >= 0, "w_base", c.w_base, "must be >= 0")
    _need(0 <= c.hit_ratio <= 1, "hit_ratio", c.hit_ratio, "must be in [0, 1]")
    _need(0 <= c.prune_floor < 1, "prune_floor", c.prune_floor, "must be in [0, 1)")
    _need(c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be >= 0")
    _need(c.grad_clip >= 0, "grad_clip", c.grad_clip, "must be >= 0 (0 = off)")
    _need(
        c.activation_memory_gb >= 0, "activation_memory_gb", c.activation_memory_gb, "must be >= 0"
    )
    _need(c.dtype in DTYPES, "dtype", c.dtype, f"must be one of {', '.join(DTYPES)}")
    _need(
        c.device in ("cpu", "cuda", "auto") or c.device.startswith("cuda:"),
        "device",
        c.device,
        "must be cpu, cuda, cuda:N or auto",
    )
    _need(c.parallel in PARALLEL, "parallel", c.parallel, f"must be one of {', '.join(PARALLEL)}")
    _need(
        c.on_nonfinite in ON_NONFINITE,
        "on_nonfinite",
        c.on_nonfinite,
        f"must be one of {', '.join(ON_NONFINITE)}",
    )
    _need(c.keep_checkpoints >= 1, "keep_checkpoints", c.keep_checkpoints, "must be >= 1")
    _need(c.save_every >= 0, "save_every", c.save_every, "must be >= 0 (0 = only on exit)")
    _need(bool(c.out.strip()), "out", c.out, "must name a run directory")
    _need(
        not (c.resume and c.overwrite),
        "overwrite",
        c.overwrite,
        "cannot be combined with resume (resume continues a run, overwrite deletes it)",
    )
    if c.method == "prune":  # the budget's keys: only prune's cap moves (other methods ignore them)
        _need(c.min_len <= c.max_len, "min_len", c.min_len, f"must be <= max_len ({c.max_len})")
        _need(
            c.min_len <= c.init_len <= c.max_len,
            "init_len",
            c.init_len,
            f"must be within [min_len, max_len] = [{c.min_len}, {c.max_len}]",
        )
    _need(
        c.rollout_engine in ROLLOUT_ENGINES,
        "rollout_engine",
        c.rollout_engine,
        f"must be one of {', '.join(ROLLOUT_ENGINES)}",
    )
    _need(
        c.teacher_engine in TEACHER_ENGINES,
        "teacher_engine",
        c.teacher_engine,
        f"must be one of {', '.join(TEACHER_ENGINES)}",
    )
    if c.teacher_url:
        _need(
            c.teacher_url.startswith(("http://", "https://")),
            "teacher_url",
            c.teacher_url,
            "must be http://HOST:PORT (or https://) of a vLLM server",
        )
        _need(
            c.teacher_engine == "vllm",
            "teacher_url",
            c.teacher_url,
            "needs teacher_engine=vllm (the server is a vLLM engine)",
        )
    if c.teacher_engine == "vllm":
        _need(
            c.loss in ("sampled_rkl", "topk_rkl"),
            "loss",
            c.loss,
            "full-vocabulary losses need the teacher's whole distribution at every token from "
            "a forward in the trainer: use topk_rkl or sampled_rkl, or teacher_engine=hf",
        )
        _need(
            not c.online_pruning,
            "online_pruning",
            c.online_pruning,
            "online pruning scores chunks with the hf teacher's KV cache; use teacher_engine=hf "
            "(rollout_engine=vllm works with it)",
        )
    _need(
        0 < c.teacher_timeout < float("inf"),
        "teacher_timeout",
        c.teacher_timeout,
        "must be a number of seconds > 0",
    )
    _need(c.teacher_retries >= 0, "teacher_retries", c.teacher_retries, "must be >= 0")
    _need(c.teacher_backoff >= 0, "teacher_backoff", c.teacher_backoff, "must be >= 0 seconds")
    _need(c.vllm_kv_cache_mb >= 16, "vllm_kv_cache_mb", c.vllm_kv_cache_mb, "must be >= 16")
    _need(0 < c.vllm_gpu_memory <= 1, "vllm_gpu_memory", c.vllm_gpu_memory, "must be in (0, 1]")
    _need(c.lora_r >= 0, "lora_r", c.lora_r, "must be >= 0 (0 = off: every weight trains)")
    if c.lora_r:
        _lora(c)
    from pruneopd.teacher_entries import validate_teachers

    validate_teachers(c)
    if c.online_pruning or c.reliable_prefix_only:
        _need(
            c.method == "prune",
            "method",
            c.method,
            "online_pruning / reliable_prefix_only are options of method=prune",
        )


def _lora(c: TrainConfig) -> None:
    """The LoRA keys (read only when lora_r > 0)."""
    _need(c.lora_alpha > 0, "lora_alpha", c.lora_alpha, "must be > 0")
    _need(0 <= c.lora_dropout < 1, "lora_dropout", c.lora_dropout, "must be in [0, 1)")
    _need(
        c.lora_save in LORA_SAVE, "lora_save", c.lora_save, f"must be one of {', '.join(LORA_SAVE)}"
    )
    targets = c.lora_target_modules
    _need(
        isinstance(targets, (list, tuple))
        and bool(targets)
        and all(isinstance(t, str) and t.strip() for t in targets),
        "lora_target_modules",
        targets,
        "must name at least one module of the student (e.g. q_proj,v_proj)",
    )
    _need(
        c.parallel != "fsdp",
        "parallel",
        c.parallel,
        "LoRA students train with parallel=ddp (only the adapters train and are replicated)",
    )
