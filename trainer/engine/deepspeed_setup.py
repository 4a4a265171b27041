"""DeepSpeed config (ZeRO file + what the recipe decides), optimizer, schedule and ``deepspeed.initialize``."""
from __future__ import annotations

import math
import os

import torch

from ..config import ConfigError
from .settings import OptimSettings, TrainSettings

# Decided by the recipe; a ds_configs file setting them would silently disagree with it.
RECIPE_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
               "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler", "data_types")


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_ds_config(path: str, train: TrainSettings, optim: OptimSettings, micro_steps_per_batch: int = 1) -> dict:
    if not os.path.exists(path) and os.path.exists(os.path.join(REPO, path)):
        path = os.path.join(REPO, path)  # recipes name ds_configs/ relative to the project
    from data_prep import jsonio

    config = jsonio.read(path, "train.deepspeed", ConfigError)
    clash = [k for k in RECIPE_KEYS if k in config]
    if clash:
        raise ConfigError(f"train.deepspeed {path}: sets {', '.join(clash)}, which the recipe decides; remove them from the file")
    config.update(
        # With gradient caching a batch is several DeepSpeed micro-steps (one per chunk).
        train_micro_batch_size_per_gpu=max(1, train.micro_batch // micro_steps_per_batch),
        gradient_accumulation_steps=train.grad_accum * micro_steps_per_batch,
        gradient_clipping=optim.grad_clip,
        bf16={"enabled": train.precision == "bf16"},
        steps_per_print=10**9,
        wall_clock_breakdown=False,
    )
    accumulated = config["gradient_accumulation_steps"] > 1
    if train.precision == "bf16":
        if zero_stage(config) >= 1:
            # Gradients of the micro-steps of one batch (gradient-cache chunks, grad_accum) are summed in fp32:
            # DeepSpeed's default sums them in the model's bf16, which loses the small chunks' share.
            config["data_types"] = {"grad_accum_dtype": "fp32"}
        elif accumulated:
            raise ConfigError(f"train.deepspeed {path}: ZeRO stage 0 sums accumulated bf16 gradients in bf16 "
                              f"({config['gradient_accumulation_steps']} micro-steps a batch here); use ZeRO 1 or more")
    return config


def lr_lambda(optim: OptimSettings, max_steps: int):
    """The learning-rate factor per step: warm-up (from ``warmup_start_lr``, linear or log), then the
    schedule's decay from ``lr`` to ``min_lr_ratio * lr``."""
    warmup = optim.warmup_steps if optim.warmup_steps is not None else int(round(optim.warmup_ratio * max_steps))
    start = optim.warmup_start_lr / optim.lr

    def factor(step: int) -> float:
        if step < warmup:
            if optim.warmup_type == "log":  # DeepSpeed WarmupDecayLR: log(step + 1) / log(warmup)
                rise = math.log(step + 1) / math.log(warmup) if warmup > 1 else 1.0
            else:  # from a floor: exactly start at step 0; from zero: lr / warmup at step 0, not a wasted step
                rise = step / warmup if start > 0 else (step + 1) / warmup
            return start + (1 - start) * rise
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * decay

    return factor


def initialize(model: torch.nn.Module, train: TrainSettings, optim: OptimSettings, micro_steps_per_batch: int = 1):
    import deepspeed

    config = load_ds_config(train.deepspeed, train, optim, micro_steps_per_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    # A callable, so the schedule wraps the optimizer DeepSpeed actually steps (its ZeRO wrapper).
    schedule = lr_lambda(optim, train.max_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config, dist_init_required=False,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return engine, optimizer, scheduler, config


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def set_num_threads_for_cpu(world_size: int) -> None:
    """On CPU, ranks on one machine share its cores: give each its share (unless OMP_NUM_THREADS says)."""
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))))
