"""Stage-1 batches: length-grouped, resumable micro-batches of (context, continuation) rows."""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import torch

from .sampler import LengthGroupedBatchSampler


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), max(1, int(lengths.max()))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


class CompressionBatches:
    """``joined``: each row's context and continuation as one text (``ids``/``lengths``), for objectives
    that read whole texts (mntp)."""

    def __init__(self, dataset, micro_batch: int, world_size: int, rank: int, seed: int, pad_id: int,
                 group_by_length: bool = True, joined: bool = False):
        self.joined = joined
        table = dataset.data.table
        lengths = (pc.list_value_length(table["context_ids"]).to_numpy(zero_copy_only=False)
                   + pc.list_value_length(table["continuation_ids"]).to_numpy(zero_copy_only=False))
        self.dataset = dataset
        self.pad_id = pad_id
        self.sampler = LengthGroupedBatchSampler(np.asarray(lengths), micro_batch, world_size, rank, seed,
                                                 group_by_length=group_by_length)

    def __iter__(self):
        for indices in self.sampler:
            rows = self.dataset[list(map(int, indices))]
            if self.joined:
                ids, lengths = pad_right([c + y for c, y in zip(rows["context_ids"], rows["continuation_ids"])],
                                         self.pad_id)
                yield {"ids": ids, "lengths": lengths}
                continue
            context, context_len = pad_right(rows["context_ids"], self.pad_id)
            continuation, continuation_len = pad_right(rows["continuation_ids"], self.pad_id)
            yield {"context": context, "context_len": context_len,
                   "continuation": continuation, "continuation_len": continuation_len}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
