"""Stage-1 batches: length-grouped, resumable micro-batches of (context, continuation) rows."""
from __future__ import annotations

import numpy as np

from .padding import pad_right
from .sampler import LengthGroupedBatchSampler


class CompressionBatches:
    """``joined``: each row's context and continuation as one text (``ids``/``lengths``), for objectives
    that read whole texts (mntp)."""

    def __init__(self, dataset, micro_batch: int, world_size: int, rank: int, seed: int, pad_id: int,
                 group_by_length: bool = True, joined: bool = False, rows=None):
        """``rows``: the dataset rows to train on (default all; stage 1 keeps its held-out windows out)."""
        self.joined = joined
        import pyarrow.compute as pc

        table = dataset.data.table
        lengths = (pc.list_value_length(table["context_ids"]).to_numpy(zero_copy_only=False)
                   + pc.list_value_length(table["continuation_ids"]).to_numpy(zero_copy_only=False))
        self.dataset = dataset
        self.pad_id = pad_id
        self.rows = np.arange(len(lengths)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.sampler = LengthGroupedBatchSampler(np.asarray(lengths)[self.rows], micro_batch, world_size, rank, seed,
                                                 group_by_length=group_by_length)

    def __iter__(self):
        for indices in self.sampler:
            rows = self.dataset[self.rows[np.asarray(indices, dtype=np.int64)].tolist()]
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
