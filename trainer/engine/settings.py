"""Typed settings of the engine: optimizer/schedule and the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config import ConfigError


@dataclass
class OptimSettings:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    warmup_steps: Optional[int] = None  # overrides warmup_ratio (the authors: 3,200 of 32,000 in stage 1)
    # Warm-up goes from this learning rate to ``lr`` (the authors' WarmupDecayLR warmup_min_lr, 1e-5);
    # 0: from lr / warmup at the first step.
    warmup_start_lr: float = 0.0
    warmup_type: Literal["linear", "log"] = "linear"  # log: DeepSpeed WarmupDecayLR's default curve
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # where the decay ends, as a fraction of lr (the authors decay to 1e-5 / 1e-4)
    grad_clip: float = 2.0

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr:g}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio:g}")
        if self.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0: no clipping), got {self.grad_clip:g}")
        if not 0 <= self.warmup_start_lr <= self.lr:
            raise ConfigError(f"optim.warmup_start_lr must be in [0, optim.lr = {self.lr:g}], got {self.warmup_start_lr:g}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainSettings:
    output_dir: str = "runs/default"
    max_steps: int = 1000
    micro_batch: int = 8  # per rank
    grad_accum: int = 1
    seed: int = 0
    deepspeed: str = "ds_configs/zero2.json"
    precision: Literal["bf16", "fp32", "auto"] = "bf16"  # auto: bf16 when model.dtype is (or resolves to) bfloat16
    gradient_checkpointing: bool = False
    # torch.compile each decoder block (trainer/modeling/compile.py). Off by default: on the 2-core AVX2 CPU
    # the stage-1 step measured 0.95x eager (docs/BENCHMARKS.md); the GPU session measures it at 7B.
    compile: bool = False
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    resume: str = "auto"  # auto | never | path of a checkpoint directory
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    # The task's evaluation (stage 1: compression diagnostics on held-out windows) every this many steps and
    # at the end; 0: at the end only. ``eval_at_start``: also before the first step (untrained memory).
    eval_every: int = 0
    eval_at_start: bool = True
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    tensorboard: bool = True  # false turns TensorBoard off whatever report_to says (older recipes)
    progress: bool = True

    def validate(self) -> None:
        for name in ("max_steps", "micro_batch", "grad_accum", "log_every", "save_every", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ConfigError(f"train.eval_every must be >= 0, got {self.eval_every}")
