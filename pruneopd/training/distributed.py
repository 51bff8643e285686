"""Scale-out under `torchrun`: one process per device, the student data-parallel.

    torchrun --nproc_per_node N -m pruneopd train [--config FILE] [key=value ...]

Every rank holds the teacher (replicated, inference only) and samples, scores and trains on its
own slice of each step's global batch (`prompts_per_step x responses_per_prompt` samples).
Sampling randomness is drawn for the whole global batch on every rank and sliced
(`rollout.sample_uniforms`), losses are normalised by the global token count, and metrics
and the budget's hit ratio are reduced across ranks, so N processes train like one process
with the same global batch. Rank 0 alone writes logs, samples and checkpoints.

`parallel=ddp` wraps the student's loss module in `DistributedDataParallel` (replicated
weights, gradients all-reduced). `parallel=fsdp` shards it with FSDP2's `fully_shard` (each
decoder layer, then the root); a full-weight copy of the student, refreshed after every
update, samples the rollouts and is what checkpoints save (as rollout engines next to FSDP
trainers do), so generation never waits on per-token all-gathers.
Backend: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import copy
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pruneopd.config import ConfigError
from pruneopd.training import lora
from pruneopd.training.checkpoint import save_checkpoint
from pruneopd.training.objective import StudentLoss


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def split(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous share of n items (earlier ranks get the extra)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0] > 0)

    def gather(self, x_B: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equally sized [B, ...] tensor along dim 0, in rank order."""
        if self.world == 1:
            return x_B
        parts = [torch.empty_like(x_B, device=self.device) for _ in range(self.world)]
        dist.all_gather(parts, x_B.to(self.device))
        return torch.cat(parts).to(x_B.device)

    def gather_objects(self, obj) -> list:
        """Every rank's picklable `obj`, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's picklable `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> Dist:
    """Join the torchrun job (gloo on CPU, nccl on CUDA); a plain `Dist()` outside torchrun."""
    if world_size() == 1:
        return Dist(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        global _OURS
        _OURS = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def on_main(d: Dist, fn):
    """Run `fn` on rank 0 only and hand its result (or its ConfigError) to every rank."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except ConfigError as e:
            error = str(e)
    result, error = d.broadcast((result, error))
    if error is not None:
        raise ConfigError(error)
    return result


def save_once(d: Dist, out, step: int, student, state: dict, keep: int):
    """Checkpoint on rank 0; the others wait so no rank runs ahead of a half-written step."""
    path = save_checkpoint(out, step, student, state, keep) if d.main else None
    d.barrier()
    return d.broadcast(path)


_OURS = False  # whether init() made the process group (an in-process vLLM engine makes its own)


def shutdown(finished: bool = False) -> None:
    """Leave the process group this module joined (one made by vLLM is vLLM's to destroy).

    `finished`: this rank's run ended normally, so every rank reaches here; they meet at a
    barrier first and tear the group down together. Without it a rank that finished early (every
    rank but 0 returns while rank 0 still writes final/ and the summary) destroyed its gloo
    group while rank 0's was alive, and now and then aborted at exit ("terminate called without
    an active exception", issue 33). After an error no barrier: another rank may be gone."""
    if not (_OURS and dist.is_initialized()):
        return
    if finished:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=600))
        else:
            dist.barrier()
    dist.destroy_process_group()


class ParallelStudent:
    """The student as the trainer uses it, in one process or data-parallel.

    - `model`: a plain Hugging Face model with the current full weights on every rank, for
      sampling, evaluation and saving;
    - `loss_module`: what the update calls (`StudentLoss`, wrapped for DDP/FSDP2);
    - `parameters()`: what the optimizer steps (sharded DTensors under FSDP2).
    """

    def __init__(self, student, mode: str, d: Dist):
        self.mode = mode if d.world > 1 else "none"
        self.dist = d
        self.adapter = None  # a LoRA student's peft model (training/lora.py), else None
        if lora.is_adapted(student):
            if self.mode == "fsdp":
                raise ValueError("a LoRA student trains with parallel=ddp")
            self.adapter, student = student, student.get_base_model()
        self.model = student
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [d.device.index] if d.device.type == "cuda" else None
            self.loss_module = DistributedDataParallel(StudentLoss(student), device_ids=ids)
        elif self.mode == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            self.model = copy.deepcopy(student)  # full-weight copy for rollouts and saving
            mesh = init_device_mesh(d.device.type, (d.world,))
            for layer in _decoder_layers(student):
                fully_shard(layer, mesh=mesh)
            self.loss_module = fully_shard(StudentLoss(student), mesh=mesh)
        elif self.mode == "none":
            self.loss_module = StudentLoss(student)
        else:
            raise ValueError(f"unknown parallel mode {mode!r}")
        if self.adapter is not None:  # sampling, evaluation, a merged final/: the merged copy
            self.model = lora.merged_copy(student)

    @property
    def saved(self):
        """What a checkpoint's `student/` holds: the full weights, or a LoRA student's adapters."""
        return self.model if self.adapter is None else self.adapter

    def parameters(self):
        """What the optimizer steps: every weight, or a LoRA student's adapters only."""
        return [p for p in self.loss_module.parameters() if p.requires_grad]

    def train(self, on: bool = True) -> None:
        self.loss_module.train(on)
        self.model.train(on)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def after_update(self) -> None:
        """Refresh the full-weight copy from the shards (FSDP2) or the merged copy from the
        adapters (LoRA); a no-op otherwise."""
        if self.adapter is not None:
            lora.refresh(self.model, self.adapter.get_base_model())
        if self.mode != "fsdp":
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.loss_module, options=StateDictOptions(full_state_dict=True)
        )
        prefix = "student."
        self.model.load_state_dict({k[len(prefix) :]: v for k, v in full.items()})

    def optimizer_state(self, opt) -> dict:
        """A full optimizer state dict (collective under FSDP2; complete on rank 0)."""
        if self.mode != "fsdp":
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {"fsdp_full": get_optimizer_state_dict(self.loss_module, opt, options=opts)}

    def load_optimizer_state(self, opt, state: dict) -> None:
        """Load what `optimizer_state` saved (the number of ranks may differ)."""
        if ("fsdp_full" in state) != (self.mode == "fsdp"):
            saved = "parallel=fsdp" if "fsdp_full" in state else "one process or parallel=ddp"
            raise ConfigError(
                f"the checkpoint's optimizer state was saved by {saved}; resume it "
                f"the same way (now: {self.mode if self.mode != 'none' else 'one process'})"
            )
        if self.mode != "fsdp":
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            self.loss_module,
            opt,
            state["fsdp_full"],
            options=StateDictOptions(full_state_dict=True),
        )


def _decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM (each becomes one FSDP2 unit)."""
    layers = getattr(model.get_decoder(), "layers", None)
    return list(layers) if layers is not None else []
