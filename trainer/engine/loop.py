"""The training loop shared by every stage: a stage is a Task that builds its model and data and
computes a loss; checkpointing, resume, signals, non-finite guards and logging live here once."""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch

from data_prep.errors import UserError

from .checkpoint import Checkpointer
from .deepspeed_setup import initialize, set_num_threads_for_cpu, zero_stage
from .dist import World, any_rank, init_distributed, shutdown, world_from_env
from .metrics import MetricsLogger
from .settings import OptimSettings, TrainSettings
from .signals import REQUEUE_EXIT, StopRequest


class NonFiniteLoss(UserError):
    pass


@dataclass
class LossOutput:
    loss: torch.Tensor
    tokens: int  # tokens this rank processed for this loss (for tokens/s)


class Data(Protocol):
    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Task(Protocol):
    """What a stage plugs into the engine."""

    def build_model(self, world: World, device: torch.device) -> torch.nn.Module: ...
    def build_data(self, world: World) -> Data: ...
    # DeepSpeed micro-steps one batch takes (gradient caching: one per chunk); it sets DeepSpeed's
    # gradient_accumulation_steps to train.grad_accum times this.
    micro_steps_per_batch: int

    def loss(self, engine, batch: dict) -> LossOutput: ...
    def update(self, engine, out: LossOutput) -> None: ...  # backward(s) and engine.step()(s) of one batch
    def save_artifacts(self, engine, directory: str, world: World) -> None: ...
    # Optional: ``evaluate(engine) -> dict`` of figures (every rank calls it; the figures are global) and
    # ``eval_summary(figures) -> str``; the loop runs it every ``train.eval_every`` steps and at the end.


def seed_everything(seed: int, rank: int) -> None:
    # Different dropout masks per rank, reproducible per run.
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(task: Task, train_cfg: TrainSettings, optim: OptimSettings, log=print, run_config: dict | None = None) -> int:
    """Run (or resume) a stage to ``train_cfg.max_steps``; returns the process exit code."""
    world = world_from_env()
    device = init_distributed(world)
    set_num_threads_for_cpu(world.size)
    seed_everything(train_cfg.seed, world.rank)
    say = log if world.main else (lambda *a, **k: None)

    model = task.build_model(world, device)
    effective = getattr(task, "effective", None)
    if effective is not None and world.main:
        from ..modeling.effective import summary, write_effective

        write_effective(effective, train_cfg.output_dir)
        say(summary(effective))
    engine, _, scheduler, ds_config = initialize(model, train_cfg, optim, getattr(task, "micro_steps_per_batch", 1))
    data = task.build_data(world)
    ckpt = Checkpointer(os.path.join(train_cfg.output_dir, "checkpoints"), world, train_cfg.keep_last)

    step = 0
    train_s = 0.0  # the training loop's own time, summed over every resume (requeues), without start-up
    resume_from = None
    if train_cfg.resume == "auto":
        resume_from = ckpt.newest_loadable(say)
    elif train_cfg.resume != "never":
        resume_from = train_cfg.resume
        if not os.path.exists(os.path.join(resume_from, "COMPLETE")):
            raise UserError(f"train.resume {resume_from}: not a complete checkpoint directory")
        broken = ckpt.unreadable(resume_from)
        if broken:
            raise UserError(f"train.resume {resume_from}: does not load ({broken})")
    if resume_from:
        state = ckpt.load(engine, resume_from)
        step = int(state["step"])
        train_s = float(state.get("train_s", 0.0))
        data.load_state_dict(state["data"])
        say(f"resumed from {resume_from} at step {step}")

    # The sbatch scripts name the marker (LLM2COMP_REQUEUE_FILE) so they need not know the output directory.
    requeue_marker = os.environ.get("LLM2COMP_REQUEUE_FILE") or os.path.join(train_cfg.output_dir, "REQUEUE")
    if world.main and os.path.exists(requeue_marker):
        os.remove(requeue_marker)
    stop = StopRequest()
    metrics = MetricsLogger(train_cfg.output_dir, world.main, step, train_cfg.max_steps,
                            train_cfg.tensorboard and "tensorboard" in train_cfg.report_to, train_cfg.progress,
                            wandb="wandb" in train_cfg.report_to, run_config=run_config)
    if metrics.superseded:
        since = f"after step {step} (the checkpoint resumed from)" if step else "by an attempt that left no checkpoint"
        say(f"metrics.jsonl: {metrics.superseded} row(s) logged {since} moved to metrics.superseded.jsonl; "
            "those steps run again")
    say(f"training {type(task).__name__} on {world.size} rank(s), ZeRO-{zero_stage(ds_config)}, "
        f"{train_cfg.precision}, global batch {train_cfg.micro_batch * train_cfg.grad_accum * world.size}")

    def trained_s() -> float:
        return train_s + time.monotonic() - t_loop

    def save(at: int) -> None:
        ckpt.save(engine, at, {"step": at, "data": data.state_dict(), "train_s": trained_s()})

    evaluate = getattr(task, "evaluate", None)
    last_eval = {"step": None, "figures": None}

    def run_eval(at: int) -> float:
        """Evaluate, log, and return the seconds it took (kept out of the next window's tokens/s)."""
        t = time.monotonic()
        figures = evaluate(engine)
        took = time.monotonic() - t
        if figures:
            metrics.log_eval(at, {**figures, "eval_s": took})
            describe = getattr(task, "eval_summary", None)
            say(f"eval at step {at}: {describe(figures) if describe else figures}")
        last_eval.update(step=at, figures=figures)
        return took

    batches = iter(data)
    nonfinite_run = skipped = 0
    window_loss, window_n, window_tokens, t_window = 0.0, 0, 0, time.monotonic()
    last_saved = step
    exit_code = 0
    t_loop = time.monotonic()
    try:
        if evaluate is not None and train_cfg.eval_at_start and step == 0:
            t_window += run_eval(0)  # the untrained memory: what the run starts from
        while step < train_cfg.max_steps:
            batch = _to_device(next(batches), device)
            out = task.loss(engine, batch)
            if any_rank(not bool(torch.isfinite(out.loss.detach()).all()), device):
                nonfinite_run += 1
                skipped += 1
                say(f"step {step}: non-finite loss on some rank; micro-batch skipped ({nonfinite_run} in a row)")
                if nonfinite_run >= train_cfg.max_nonfinite:
                    raise NonFiniteLoss(
                        f"{nonfinite_run} non-finite losses in a row at step {step} (train.max_nonfinite); "
                        "lower optim.lr, check the data, or resume from an earlier checkpoint"
                    )
                continue
            nonfinite_run = 0
            before = engine.global_steps
            task.update(engine, out)
            boundary = engine.global_steps > before
            window_loss += float(out.loss.detach())
            window_n += 1
            window_tokens += out.tokens
            if not boundary:
                continue
            step += 1
            metrics.advance()
            if step % train_cfg.log_every == 0 or step == train_cfg.max_steps:
                stats = torch.tensor([window_loss, window_n, window_tokens], dtype=torch.float64, device=device)
                if torch.distributed.is_initialized():
                    torch.distributed.all_reduce(stats)
                elapsed = time.monotonic() - t_window
                norm = engine.get_global_grad_norm()
                metrics.log(step, {
                    "loss": stats[0].item() / stats[1].item(),
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(norm) if norm is not None else None,
                    "tokens_per_s": stats[2].item() / elapsed,
                    "skipped_nonfinite": skipped,
                    "train_s": trained_s(),
                })
                window_loss, window_n, window_tokens, t_window = 0.0, 0, 0, time.monotonic()
            if any_rank(stop.requested, device):
                save(step)
                # Launchers like torchrun replace the exit code; the marker survives. It is written before the
                # final barrier, so no rank exits (and no srun --kill-on-bad-exit fires) before it exists.
                if world.main:
                    with open(requeue_marker, "w") as fh:
                        fh.write(f"{step}\n")
                say(f"stop requested by signal: checkpoint at step {step} written; exiting with {REQUEUE_EXIT} (requeue)")
                exit_code = REQUEUE_EXIT
                break
            if evaluate is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0 \
                    and step < train_cfg.max_steps:
                t_window += run_eval(step)
            if step % train_cfg.save_every == 0 and step < train_cfg.max_steps:
                save(step)
                last_saved = step
        else:
            if evaluate is not None and last_eval["step"] != step:
                run_eval(step)
            if last_saved != step or not ckpt.latest():
                save(step)
            task.save_artifacts(engine, os.path.join(train_cfg.output_dir, "final"), world)
            final = ""
            if last_eval["figures"]:
                describe = getattr(task, "eval_summary", None)
                final = f"; held-out: {describe(last_eval['figures']) if describe else last_eval['figures']}"
            say(f"done: {step} steps; artifacts in {os.path.join(train_cfg.output_dir, 'final')}{final}")
    finally:
        metrics.close()
    shutdown()
    return exit_code


# Overrides every recipe accepts (DESIGN.md §5); stages add their own.
COMMON_ALIASES = {
    "model": "model.path", "data": "data.path", "output_dir": "train.output_dir", "max_steps": "train.max_steps",
    "seed": "train.seed", "resume": "train.resume", "deepspeed": "train.deepspeed",
}


def check_paths(recipe) -> None:
    """The recipe's paths, before any model is built (40-70 s on a CPU, minutes at 7B): the output folder is a
    folder or can be made, the model is there, the data folders are finished prep outputs, the DeepSpeed
    config reads."""
    from data_prep.errors import PrepError
    from data_prep.manifest import read_manifest

    init = getattr(getattr(recipe, "init", None), "init_from", None)
    if not init and getattr(getattr(recipe, "model", None), "path", None):  # with init_from the lineage names it
        from ..modeling.loading import resolve_model_path

        resolve_model_path(recipe.model.path)
    out = recipe.train.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"train.output_dir {out}: is a file, not a folder for the run")
    for key, obj in (("data.path", getattr(recipe, "data", None)), ("eval.path", getattr(recipe, "eval", None))):
        path = getattr(obj, "path", None)
        if path:
            try:
                read_manifest(path)
            except PrepError as e:
                raise UserError(f"{key} {e}") from None
    if recipe.train.deepspeed:
        from .deepspeed_setup import load_ds_config

        load_ds_config(recipe.train.deepspeed, recipe.train, recipe.optim)  # read and checked as training will


def run_stage(recipe_cls, task_cls, args) -> int:
    """``llm2comp <stage> --config RECIPE [k=v ...]``: load the recipe, record it, train."""
    from ..config import load_config, save_config

    from .precision import resolve_precision

    recipe = load_config(recipe_cls, args.config, args.overrides)
    check_paths(recipe)
    said = resolve_precision(recipe.model, recipe.train, "cuda" if torch.cuda.is_available() else "cpu")
    if said and int(os.environ.get("RANK", "0")) == 0:
        print(said, flush=True)
    os.makedirs(recipe.train.output_dir, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(recipe, os.path.join(recipe.train.output_dir, "recipe.yaml"))
    from ..config import config_to_dict

    return train(task_cls(recipe), recipe.train, recipe.optim, run_config=config_to_dict(recipe))
