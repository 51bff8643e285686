"""Typed training configuration: one dataclass, loaded from YAML with `key=value` overrides.

Every field has help text (`help` metadata). `load_config` reads a YAML file, applies the
overrides, converts strings to the field's type and validates everything before any
compute is spent (`pruneopd.config_checks.validate`); problems raise `ConfigError` with a
message naming the key and value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pruneopd.config_checks import validate
from pruneopd.errors import ConfigError  # noqa: F401  (this module's interface)

# the attention projections of Llama / Qwen / Mistral models (the zoo's and the real pair's)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # ---- what to distil ------------------------------------------------------------------
    student: str = _f("student-cross", "student: zoo name or local Hugging Face folder")
    teacher: str = _f("teacher", "teacher: zoo name or local Hugging Face folder")
    teachers: list = field(
        default_factory=list,
        metadata={
            "help": "several teachers instead of `teacher`: a list of {name, model (zoo name or "
            "folder), engine (hf | vllm), teacher_url}; README, 'Several teachers'"
        },
    )
    teacher_routing: str = _f(
        "field",
        "teachers: field (each prompt's teacher_field names its teacher) | mixture (every "
        "teacher scores every sample; their distributions mixed by teacher_weights)",
    )
    teacher_field: str = _f(
        "task",
        "teachers, routing by field: the data field naming each prompt's teacher (built-in "
        "tasks: task, e.g. task=regs+add with teachers named regs and add)",
    )
    teacher_weights: list = field(
        default_factory=list,
        metadata={"help": "teachers, mixture: one weight >= 0 per teacher (default: equal)"},
    )
    task: str = _f(
        "regs", "built-in task the prompts come from: regs | add | loop, or a mix: regs+add"
    )
    dtype: str = _f("float32", "model weights: float32 | bfloat16 | float16")
    device: str = _f("cpu", "cpu | cuda | cuda:N | auto (cuda when available)")
    gradient_checkpointing: bool = _f(False, "recompute the student's activations in backward")
    activation_memory_gb: float = _f(
        1.0,
        "turn gradient checkpointing on by itself when the student's activations for a step "
        "(samples x (longest prompt + max_len) tokens) would exceed this many GB (0 = never)",
    )
    parallel: str = _f("ddp", "under torchrun: ddp (replicated student) | fsdp (FSDP2 shards)")
    difficulty: int = _f(0, "task difficulty (number of steps); 0 = the task's default")
    data: str = _f("", "JSONL/Parquet prompts with answers (replaces task); see pruneopd/data.py")
    eval_data: str = _f(
        "",
        "held-out JSONL/Parquet for evaluation (default: hold out up to "
        "eval_problems records, at most a quarter, of data)",
    )
    prompt_field: str = _f("auto", "data: prompt field (auto: prompt, question, problem)")
    answer_field: str = _f(
        "auto",
        "data: answer field, dots for nesting (auto: "
        "reward_model.ground_truth, answer, solution, ground_truth)",
    )
    chat_template: bool = _f(True, "data: apply the tokenizer's chat template to text prompts")
    seed: int = _f(0, "seed for prompts, sampling and initialisation")
    out: str = _f("runs/default", "run directory (logs, samples, final model)")
    # ---- method ------------------------------------------------------------------------
    method: str = _f(
        "prune",
        "full | prefix | prefix-adaptive | prune | hybrid (prune + outcome reward on the tail) | "
        "iw-opd (prefix-discrepancy token weights) | window (probe-audited window) | "
        "auto (measure where the teacher's top-1 agreement decays: full OPD or a prefix up to it); "
        "the classes of pruneopd.method",
    )
    loss: str = _f("topk_rkl", "sampled_rkl | topk_rkl | full_rkl | forward_kl | jsd")
    jsd_beta: float = _f(0.5, "jsd: 0 = forward KL, 1 = reverse KL (TRL convention)")
    # ---- optimisation ------------------------------------------------------------------
    max_steps: int = _f(100, "number of OPD steps")
    prompts_per_step: int = _f(16, "prompts per step")
    responses_per_prompt: int = _f(4, "student samples per prompt")
    temperature: float = _f(1.0, "sampling temperature of the student")
    top_p: float = _f(1.0, "nucleus sampling of the student")
    lr: float = _f(1e-4, "AdamW learning rate (after warm-up)")
    warmup_steps: int = _f(5, "linear learning-rate warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    grad_clip: float = _f(1.0, "max gradient norm (0 = off)")
    loss_chunk: int = _f(
        0,
        "tokens per chunk in the loss (bounds [tokens, V] memory); 0 = from the vocabulary: "
        "the largest power of two <= 4096 whose [chunk, V] float32 logits fit in 128 MiB "
        "(4096 for the zoo, 512 for a 49k vocabulary)",
    )
    # ---- drift monitor (method.md) --------------------------------------------------
    topk: int = _f(16, "K of the topk_rkl candidates (and of the teacher's top-K scores)")
    drift_k: int = _f(0, "K of the drift monitor's top-K overlap (0 = same as topk)")
    tau: float = _f(0.7, "drift event when overlap < tau (or top-p mass for top_p_accept)")
    drift_metric: str = _f("topk_overlap", "topk_overlap | teacher_top_p_accept")
    w_drop: float = _f(0.01, "reliability drop per drift event (delta)")
    w_base: float = _f(0.5, "loss multiplier floor: m_t = w_t + w_base")
    # ---- response budget ------------------------------------------------------------
    max_len: int = _f(512, "L_max: response cap of full OPD and ceiling of the budget")
    min_len: int = _f(64, "L_min: floor of the dynamic budget")
    init_len: int = _f(256, "L_init: first cap of the dynamic budget")
    budget_step: int = _f(32, "cap change per grow/shrink")
    budget_margin: int = _f(32, "hit boundary b = max(L_min, L - margin)")
    hit_ratio: float = _f(0.1, "grow when at least this share of samples hits b")
    patience: int = _f(3, "shrink after this many steps in a row below hit_ratio")
    # ---- prefix OPD ------------------------------------------------------------------
    prefix_len: int = _f(64, "prefix OPD: response cap P (start of the schedule)")
    prefix_len_end: int = _f(0, "prefix OPD: P at the last step (0 = fixed prefix)")
    prefix_schedule: str = _f(
        "auto",
        "prefix OPD: fixed | linear (prefix_len -> prefix_len_end) | adaptive (grow P by "
        "prefix_step when the prefix's KL is below prefix_kl_threshold or flat) | auto "
        "(linear if prefix_len_end > 0, else fixed)",
    )
    prefix_step: int = _f(32, "adaptive prefix: tokens P grows by")
    prefix_window: int = _f(6, "adaptive prefix: steps of KL looked at before P may grow")
    prefix_kl_threshold: float = _f(0.05, "adaptive prefix: grow once the window's mean KL <= this")
    prefix_flat: float = _f(
        0.05, "adaptive prefix: grow once the KL fell by <= this share over the window"
    )
    # ---- our extensions --------------------------------------------------------------
    online_pruning: bool = _f(False, "prune: stop a sample once w_t <= prune_floor")
    prune_floor: float = _f(0.0, "online pruning stops samples whose weight reaches this")
    chunk_size: int = _f(16, "online pruning: tokens sampled between teacher checks")
    reliable_prefix_only: bool = _f(False, "prune: train only on tokens with w_t > 0")
    gate_floor: float = _f(0.0, "hybrid: tokens with w_t <= this get the outcome reward")
    gate_coef: float = _f(1.0, "hybrid: weight of the tail's policy-gradient loss")
    gate_norm: str = _f("std", "hybrid: group advantage (r - mean) / (std + eps) | none: r - mean")
    # ---- IW-OPD and the probed window (docs/method.md) ------------------------------------
    iw_gamma: float = _f(
        0.5,
        "iw-opd: weight w_t = 1 + iw_gamma * (1 - D_<t / D), D_<t the discrepancy "
        "|log pi_T - log pi_S| summed before token t, D the sample's total",
    )
    iw_eps: float = _f(1e-8, "iw-opd: floor of a sample's total discrepancy D")
    window_len: int = _f(64, "window: the first window H (response cap of non-probe steps)")
    window_min: int = _f(32, "window: floor of H")
    window_step: int = _f(32, "window: tokens H grows or shrinks by after each probe")
    window_probe_every: int = _f(
        5, "window: every N-th step samples to max_len and audits the tail (0 = never: H fixed)"
    )
    window_tail_share: float = _f(
        0.2,
        "window: a probe grows H when more than this share of its OPD signal sum |a_t| lies "
        "past H, and shrinks it otherwise",
    )
    # ---- auto: the measured horizon (docs/method.md) ---------------------------------------
    auto_probe_steps: int = _f(
        6, "auto: the first N steps are full OPD and measure the top-1 agreement by position"
    )
    auto_drop: float = _f(
        0.03,
        "auto: the horizon is the first bucket past min_len whose top-1 agreement is more than "
        "this below the agreement before min_len (none: full OPD; else the adaptive prefix up to it, "
        "then the tail's audits)",
    )
    auto_persist: int = _f(
        2, "auto: consecutive buckets that must agree that much less to make a horizon"
    )
    auto_bucket: int = _f(32, "auto: positions pooled per bucket of the top-1 agreement")
    auto_audit_every: int = _f(
        5,
        "auto: once the prefix has reached the horizon, every N-th step samples to max_len, "
        "trains as full OPD and audits the tail past the prefix (0 = never: stop at the horizon)",
    )
    auto_tail_share: float = _f(
        0.2,
        "auto: an audit grows the prefix by prefix_step when more than this share of its OPD "
        "signal sum |a_t| lies past the prefix",
    )
    auto_curriculum: bool = _f(
        True,
        "auto: with no horizon, the adaptive prefix from min_len up to max_len (false: full "
        "OPD to the end, auto's fifth design; docs/benchmarks.md section 16)",
    )
    auto_iw_gamma: float = _f(
        0.0,
        "auto: > 0 weights each trained token as iw-opd does with iw_gamma = this, over the "
        "trained tokens of its sample (0 = every token weight 1)",
    )
    # ---- engines (docs/scaling.md) ------------------------------------------------------
    rollout_engine: str = _f(
        "lean",
        "student sampling: lean (the built-in KV-cache sampler) | "
        "vllm (an in-process vLLM engine, new weights pushed every step)",
    )
    teacher_engine: str = _f(
        "hf",
        "teacher scoring: hf (a forward of the teacher) | vllm "
        "(an in-process vLLM engine, or the server at teacher_url)",
    )
    teacher_url: str = _f(
        "",
        "teacher_engine=vllm: http://HOST:PORT of a `vllm serve TEACHER` "
        "(OpenAI-compatible) that scores instead of an in-process engine",
    )
    teacher_timeout: float = _f(
        600.0,
        "teacher_url: seconds one request may take in all (connect, send, wait, read) before it "
        "counts as failed and is retried",
    )
    teacher_retries: int = _f(
        5,
        "teacher_url: retries of a request after a connection error, a 5xx answer or a timeout; "
        "then a checkpoint of the last good step and exit status 3",
    )
    teacher_backoff: float = _f(
        2.0,
        "teacher_url: seconds before the first retry, doubled before each next one (at most 60)",
    )
    # ---- LoRA students (training/lora.py; the [lora] extra: peft) --------------------
    lora_r: int = _f(0, "LoRA rank of the student's adapters (0 = off: every weight trains)")
    lora_alpha: float = _f(16.0, "LoRA scale: the adapters add (lora_alpha / lora_r) B A")
    lora_dropout: float = _f(0.0, "dropout on the adapters' input while training")
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata={
            "help": "modules that get adapters: names (or name suffixes) of the student's "
            "linear layers, a YAML list or q_proj,v_proj; all-linear = every one but the head"
        },
    )
    lora_save: str = _f(
        "merged",
        "final/ of a LoRA run: merged (a plain model, adapters folded into the weights) | "
        "adapter (peft's adapter folder over the student)",
    )
    vllm_kv_cache_mb: int = _f(512, "vLLM on CPU: KV-cache memory of each engine, MiB")
    vllm_gpu_memory: float = _f(
        0.3, "vLLM on a GPU: share of the device's memory each engine takes"
    )
    # ---- evaluation and logging ----------------------------------------------------------
    eval_every: int = _f(25, "evaluate on the test split every N steps (0 = only ends)")
    eval_problems: int = _f(256, "held-out problems per evaluation")
    eval_samples: int = _f(0, "also report sampled avg@n with n samples per problem")
    eval_batch: int = _f(
        64,
        "held-out problems sampled together in one batch (0 = all of them at once: on a real "
        "model, whose weights are streamed per step, fewer steps over a larger batch is faster; "
        "the KV cache grows with it: ~7 MB per sample per 300 tokens on SmolLM2-135M)",
    )
    eval_max_len: int = _f(
        0,
        "cap of the evaluation's responses (0 = the task's reference cap: its longest "
        "reference x 1.5; max_len for data files)",
    )
    eval_cache: str = _f(
        "",
        "folder of step-0 evaluations kept by a hash of the student's "
        "weights and the evaluation: runs of one student (every method and "
        "seed of a bench) evaluate it once (one process only; '' = off)",
    )
    log_samples: int = _f(
        4,
        "responses per step kept in samples.jsonl for `inspect`, and greedy responses to the "
        "first held-out problems per evaluation in eval_samples.jsonl",
    )
    tensorboard: bool = _f(True, "write TensorBoard event files")
    progress: bool = _f(True, "show a progress bar")
    wandb: bool = _f(False, "also log to Weights & Biases (skipped if not installed)")
    wandb_project: str = _f("pruneopd", "Weights & Biases project name")
    # ---- checkpoints and failures -------------------------------------------------------
    save_every: int = _f(25, "write a checkpoint every N steps (0 = only on exit/signal)")
    keep_checkpoints: int = _f(2, "keep the newest K checkpoints")
    resume: str = _f("", "'auto' = newest checkpoint in out (or start fresh), or a checkpoint path")
    overwrite: bool = _f(False, "start fresh even if out already holds a run (deletes it)")
    on_nonfinite: str = _f("stop", "non-finite loss/gradients: stop (checkpoint) | skip the batch")

    def __post_init__(self):
        validate(self)

    @property
    def monitor_k(self) -> int:
        """K the drift monitor compares: drift_k for top-K overlap; the teacher's whole top-K
        for teacher_top_p_accept (its nucleus is taken within that top-K)."""
        if self.drift_metric == "teacher_top_p_accept":
            return self.topk
        return self.drift_k or self.topk


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _convert(key: str, value, where: str):
    """Convert a YAML or command-line value to the field's declared type."""
    tp = typing.get_type_hints(TrainConfig)[key]
    if isinstance(tp, types.UnionType):
        tp = next(t for t in typing.get_args(tp) if t is not type(None))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("true", "1", "yes", "on"):
                return True
            if s in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():  # "1e3"; not "1.5e0" or "1e999"
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError
            return str(value)
        if typing.get_origin(tp) is list:  # a YAML list, or "a,b,c"
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise ValueError
            return [x.strip() for x in items if x.strip()]
        if tp is list:
            if not isinstance(value, list):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"{where}config key '{key}' = {value!r}: expected {getattr(tp, '__name__', tp)}"
        ) from None
    return value


def _check_key(key: str, where: str):
    if key not in _FIELDS:
        close = difflib.get_close_matches(key, _FIELDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}unknown config key '{key}'{hint}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """YAML file (optional) + `key=value` overrides -> validated TrainConfig."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            at = f" line {line + 1}" if line is not None else ""
            raise ConfigError(f"{p}{at}: not valid YAML ({type(e).__name__})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of key: value, got {type(data).__name__}")
        for k, v in data.items():
            _check_key(str(k), f"{p}: ")
            values[str(k)] = _convert(str(k), v, f"{p}: ")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        _check_key(k, "")
        is_str = typing.get_type_hints(TrainConfig)[k] is str
        values[k] = _convert(k, v if is_str or not v.strip() else yaml.safe_load(v), "")
    if values.get("teachers") and "teacher" in values:
        raise ConfigError(
            "config keys 'teacher' and 'teachers' cannot be combined: list every teacher in "
            "'teachers'"
        )
    return TrainConfig(**values)


def config_to_yaml(c: TrainConfig) -> str:
    """The run's config.yaml: every key, except the built-in `task` when `data` replaces it
    and `teacher` when `teachers` does (loading the file back gives the same config: those
    defaults are never read then)."""
    d = dataclasses.asdict(c)
    if c.data:
        d.pop("task")
    if c.teachers:  # `teachers` replaces `teacher`
        d.pop("teacher")
    return yaml.safe_dump(d, sort_keys=False)


def describe() -> str:
    """Every key with its default and help text (for `pruneopd train --help-config`)."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        lines.append(f"  {f.name} = {default!r}\n      {f.metadata['help']}")
    return "\n".join(lines)
