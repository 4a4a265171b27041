"""Stage-2 and stage-3 batches: sentences (two dropout views each) and query/positive/negatives rows."""
from __future__ import annotations

import numpy as np

from data_prep.errors import UserError

from .padding import pad_right
from .sampler import LengthGroupedBatchSampler


def _lengths(table, column: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(table[column]).to_numpy(zero_copy_only=False)


class SentenceBatches:
    def __init__(self, dataset, micro_batch: int, world_size: int, rank: int, seed: int, pad_id: int,
                 group_by_length: bool = False, rows=None):
        """``rows``: the dataset rows to train on (default all; mntp keeps its held-out texts out)."""
        self.dataset, self.pad_id = dataset, pad_id
        lengths = _lengths(dataset.data.table, "input_ids")
        self.rows = np.arange(len(lengths)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.sampler = _sampler(np.asarray(lengths)[self.rows], micro_batch, world_size, rank, seed, group_by_length)

    def __iter__(self):
        for indices in self.sampler:
            ids, lengths = pad_right(self.dataset[self.rows[np.asarray(indices, dtype=np.int64)].tolist()]["input_ids"],
                                     self.pad_id)
            yield {"ids": ids, "lengths": lengths}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


class PairBatches:
    """Rows with at least ``negatives`` hard negatives; the first ``negatives`` of each are used."""

    def __init__(self, dataset, micro_batch: int, world_size: int, rank: int, seed: int, pad_id: int,
                 negatives: int, one_source_per_batch: bool = False, group_by_length: bool = False):
        table = dataset.data.table
        counts = _lengths(table, "negative_ids")
        keep = np.flatnonzero(counts >= negatives)
        self.dropped = len(counts) - len(keep)
        if len(keep) == 0:
            raise UserError(f"no pair has {negatives} hard negatives (contrast.negatives); the most any has is {counts.max()}")
        self.dataset = dataset.select(keep) if self.dropped else dataset
        self.pad_id, self.negatives = pad_id, negatives
        lengths = _lengths(table, "query_ids")[keep]
        groups = None
        if one_source_per_batch:
            sources = np.asarray(self.dataset["source"])
            groups = np.unique(sources, return_inverse=True)[1]
        self.sampler = _sampler(lengths, micro_batch, world_size, rank, seed, group_by_length, groups)

    def __iter__(self):
        for indices in self.sampler:
            rows = self.dataset[list(map(int, indices))]
            query, query_len = pad_right(rows["query_ids"], self.pad_id)
            positive, positive_len = pad_right(rows["positive_ids"], self.pad_id)
            negs = [n for row in rows["negative_ids"] for n in row[: self.negatives]]
            negative, negative_len = pad_right(negs or [[self.pad_id]], self.pad_id)
            if not negs:
                negative, negative_len = negative[:0], negative_len[:0]
            yield {"query": query, "query_len": query_len, "positive": positive, "positive_len": positive_len,
                   "negative": negative, "negative_len": negative_len}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def _sampler(lengths, micro_batch, world_size, rank, seed, group_by_length, groups=None):
    try:
        return LengthGroupedBatchSampler(lengths, micro_batch, world_size, rank, seed,
                                         group_by_length=group_by_length, groups=groups)
    except ValueError as e:
        raise UserError(f"data: {e}") from None
