"""Stage 1's held-out evaluation: which rows (``trainer/data/holdout.py``), this rank's batches of them, and
the diagnostics of the current weights (``trainer/objectives/diagnostics.py``) summed over ranks."""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..config import ConfigError


class HeldOut:
    def __init__(self, recipe, dataset, kinds, identity: dict, world, pad_id: int, mask_id: Optional[int]):
        from ..data import holdout
        from ..data.shards import open_shards

        e, r = recipe.eval, recipe
        self.objective, self.mask_id = r.objective, mask_id
        self.batches, self.info, self.train_rows = [], None, None
        if e.windows == 0:
            return
        source = dataset
        if e.path and os.path.abspath(e.path) != os.path.abspath(r.data.path):
            source, _ = open_shards(e.path, kinds, identity, r.data.verify_shards)
            rows = holdout.select(source.data.table["doc_id"].to_numpy(zero_copy_only=False), e.windows)
        else:
            rows, self.train_rows = holdout.hold_out(dataset.data.table["doc_id"].to_numpy(zero_copy_only=False),
                                                     e.windows)
            if len(self.train_rows) < r.train.micro_batch * world.size:
                raise ConfigError(f"eval.windows {e.windows} leaves {len(self.train_rows)} of {len(dataset)} rows of "
                                  f"{r.data.path} to train on; lower it or give eval.path")
        self.batches = holdout.eval_batches(source, rows, e.micro_batch or r.train.micro_batch, world.size, world.rank,
                                            pad_id, joined=r.objective.kind == "mntp")
        self.info = {"windows": int(len(rows)), "source": e.path or r.data.path,
                     "held_out_of_training": self.train_rows is not None,
                     "rows_left_to_train": int(len(self.train_rows)) if self.train_rows is not None else len(dataset)}

    def __call__(self, engine) -> dict:
        """The figures of the engine's current weights ({} when the diagnostics are off), in eval mode (no LoRA
        dropout), restoring the mode after. Through the engine's forward, so ZeRO-3 gathers the weights; every
        rank runs as many forwards."""
        from ..objectives import diagnostics

        if self.info is None:
            return {}
        o, module = self.objective, engine.module
        was_training = module.training
        module.eval()
        device = next(module.parameters()).device
        total = None
        try:
            with torch.no_grad():
                for batch in self.batches:
                    batch = {k: v.to(device) for k, v in batch.items()}
                    if o.kind == "mntp":
                        sums = engine("diagnose_mntp", ratio=o.mask_ratio, mask_id=self.mask_id, mode=o.mask_mode, **batch)
                    else:
                        sums = engine("diagnose", **batch)
                    total = sums.double() if total is None else total + sums.double()
        finally:
            module.train(was_training)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return diagnostics.mntp_figures(total) if o.kind == "mntp" else diagnostics.compression_figures(total)
