"""Rank-0 logging: a progress bar, ``metrics.jsonl`` (one object per logged step), TensorBoard and, when
``train.report_to`` names it, Weights & Biases (``WANDB_MODE=offline`` and the other W&B settings are W&B's
own; a requeued job continues the same W&B run, whose id is kept in the output directory)."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import psutil
import torch
from tqdm import tqdm
from data_prep import jsonio


def memory_stats() -> dict:
    if torch.cuda.is_available():
        return {"mem_allocated_gb": torch.cuda.max_memory_allocated() / 2**30}
    return {"mem_rss_gb": psutil.Process().memory_info().rss / 2**30}


def set_aside_rows_after(path: str, step: int) -> int:
    """Move the rows of ``path`` past ``step`` (logged after the checkpoint a run resumes from, so about to be
    rerun) to ``metrics.superseded.jsonl`` beside it, so each step appears once; returns how many moved. At
    step 0 (no checkpoint: everything reruns, the step-0 evaluation too) every row moves; so does a line cut
    short by a crash."""
    keep, drop = [], []
    with open(path) as fh:
        for line in fh:
            try:
                ok = step > 0 and json.loads(line)["step"] <= step
            except (ValueError, KeyError, TypeError):
                ok = False
            (keep if ok else drop).append(line if line.endswith("\n") else line + "\n")
    if drop:
        with open(os.path.join(os.path.dirname(path), "metrics.superseded.jsonl"), "a") as fh:
            fh.writelines(drop)
        with open(path + ".tmp", "w") as fh:
            fh.writelines(keep)
        os.replace(path + ".tmp", path)
    return len(drop)


class MetricsLogger:
    def __init__(self, output_dir: str, enabled: bool, start_step: int, max_steps: int,
                 tensorboard: bool = True, progress: bool = True, wandb: bool = False,
                 run_config: Optional[dict] = None):
        self.enabled = enabled
        self.file = None
        self.tb = None
        self.wandb = None
        self.bar: Optional[tqdm] = None
        self.postfix: dict = {}  # the progress bar's figures: the last loss and the last evaluation's
        self.superseded = 0  # rows logged after the checkpoint this run resumed from (moved aside, rerun now)
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "metrics.jsonl")
        if os.path.exists(path):
            self.superseded = set_aside_rows_after(path, start_step)
        self.file = open(path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the events a crashed run logged after its last checkpoint (all of them when there
            # was none), as metrics.jsonl does.
            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                    purge_step=start_step + 1 if start_step > 0 else 0)
        if wandb:
            self.wandb = _wandb_run(output_dir, run_config or {})
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not progress or None, dynamic_ncols=True, unit="step")
        self.t0 = time.monotonic()

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values, **memory_stats(), "time": time.time()}
        self.file.write(jsonio.dumps(record, self.file.name) + "\n")
        if self.tb:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}, step=step)
        if self.bar is not None:
            self.postfix.update(loss=f"{values.get('loss', float('nan')):.4f}",
                                tok_s=f"{values.get('tokens_per_s', 0):,.0f}")
            self.bar.set_postfix(self.postfix, refresh=False)

    def log_eval(self, step: int, figures: dict) -> None:
        """An evaluation: one ``"eval": true`` row in metrics.jsonl, ``eval/NAME`` scalars in TensorBoard and
        W&B, and its headline figure on the progress bar."""
        if not self.enabled:
            return
        record = {"step": step, "eval": True, **figures, "time": time.time()}
        self.file.write(jsonio.dumps(record, self.file.name) + "\n")
        scalars = {f"eval/{k}": v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.bar is not None:
            headline = {k: figures[k] for k in ("recovered", "mntp_accuracy") if k in figures}
            self.postfix.update({k: f"{v:.3f}" for k, v in headline.items()})
            self.bar.set_postfix(self.postfix, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.file:
            self.file.close()


def _wandb_run(output_dir: str, run_config: dict):
    try:
        import wandb
    except ImportError:
        from data_prep.errors import UserError

        raise UserError("train.report_to: wandb is not installed (pip install wandb), or drop it from report_to") from None
    id_file = os.path.join(output_dir, "wandb_run_id")
    if os.path.exists(id_file):
        with open(id_file) as fh:
            run_id = fh.read().strip()
    else:
        run_id = wandb.util.generate_id() if hasattr(wandb, "util") else os.urandom(4).hex()
        with open(id_file, "w") as fh:
            fh.write(run_id + "\n")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "llm2comp"), name=os.path.basename(os.path.abspath(output_dir)),
                      id=run_id, resume="allow", dir=output_dir, config=run_config)
