"""Typed settings of the engine: optimizer/schedule and the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import ConfigError


@dataclass
class OptimSettings:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 2.0

    def validate(self) -> None:
        if self.lr <= 0 or not 0 <= self.warmup_ratio < 1 or self.grad_clip < 0:
            raise ConfigError("optim: need lr > 0, 0 <= warmup_ratio < 1, grad_clip >= 0")


@dataclass
class TrainSettings:
    output_dir: str = "runs/default"
    max_steps: int = 1000
    micro_batch: int = 8  # per rank
    grad_accum: int = 1
    seed: int = 0
    deepspeed: str = "ds_configs/zero2.json"
    precision: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = False
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    resume: str = "auto"  # auto | never | path of a checkpoint directory
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    tensorboard: bool = True  # false turns TensorBoard off whatever report_to says (older recipes)
    progress: bool = True

    def validate(self) -> None:
        for name in ("max_steps", "micro_batch", "grad_accum", "log_every", "save_every", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
