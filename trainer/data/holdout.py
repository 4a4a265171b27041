"""The held-out windows of stage 1's diagnostics, and their batches.

The rule, fixed and documented (docs/TRAINING.md): documents are ranked by the sha256 of their
``doc_id``; whole documents are taken in that order until they hold ``n`` rows; the first ``n`` rows of
them (by document rank, then row order) are the held-out set, and every row of those documents is kept
out of training (so no window of a held-out document is trained on). The choice depends on the data
alone: not on the seed, the world size, the shard order or the step.

``eval.path`` names a separate prep output instead (the corpus's held-apart split): the same rule picks
its rows, and the training data stays whole.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from data_prep.errors import UserError

from .padding import pad_right


def _doc_index(doc_ids) -> tuple[np.ndarray, np.ndarray]:
    """(each row's document number, each document's rank by sha256 of its id)."""
    uniq, inverse = np.unique(np.asarray(doc_ids, dtype=object).astype(str), return_inverse=True)
    digests = np.array([hashlib.sha256(d.encode()).hexdigest() for d in uniq])
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(digests, kind="stable")] = np.arange(len(uniq))
    return inverse.reshape(-1), rank


def doc_order(doc_ids) -> np.ndarray:
    """Row indices sorted by (sha256 of the row's doc_id, row index)."""
    inverse, rank = _doc_index(doc_ids)
    return np.argsort(rank[inverse], kind="stable")


def hold_out(doc_ids, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows [n], training rows): the rule above; training rows in their original order."""
    inverse, rank = _doc_index(doc_ids)
    order = np.argsort(rank[inverse], kind="stable")
    if n >= len(order):
        raise UserError(f"eval.windows {n}: the data holds only {len(order)} rows; lower it, or give eval.path")
    held = order[:n]
    train = np.flatnonzero(~np.isin(inverse, np.unique(inverse[held])))
    return held, train


def select(doc_ids, n: int) -> np.ndarray:
    """The first ``n`` rows by the rule (of a separate held-out dataset: nothing to keep out of training)."""
    return doc_order(doc_ids)[: min(n, len(doc_ids))]


def eval_batches(dataset, rows: np.ndarray, micro_batch: int, world_size: int, rank: int, pad_id: int,
                 joined: bool = False) -> list[dict]:
    """This rank's batches of the held-out ``rows``, longest first. Every rank gets the same number of rows
    (ZeRO-3 gathers weights in every forward, so every rank must run as many): a rank short of rows repeats
    one with ``weight`` 0. ``joined``: context and continuation as one text (``ids``, for mntp)."""
    per_rank = -(-len(rows) // world_size)
    mine = list(rows[rank::world_size])
    weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
    mine += [int(rows[0])] * (per_rank - len(mine))
    table = dataset.select(mine) if mine else None
    if table is None:
        return []
    if "input_ids" in table.column_names:  # sentence shards (mntp may train on them): one text a row
        ctx, cont = table["input_ids"], [[] for _ in mine]
    else:
        ctx, cont = table["context_ids"], table["continuation_ids"]
    order = sorted(range(len(mine)), key=lambda i: -(len(ctx[i]) + len(cont[i])))
    out = []
    for s in range(0, len(order), micro_batch):
        idx = order[s : s + micro_batch]
        w = torch.tensor([weights[i] for i in idx])
        if joined:
            ids, lengths = pad_right([ctx[i] + cont[i] for i in idx], pad_id)
            out.append({"ids": ids, "lengths": lengths, "rows": torch.tensor([mine[i] for i in idx]), "weight": w})
            continue
        context, context_len = pad_right([ctx[i] for i in idx], pad_id)
        continuation, continuation_len = pad_right([cont[i] for i in idx], pad_id)
        out.append({"context": context, "context_len": context_len, "continuation": continuation,
                    "continuation_len": continuation_len, "weight": w})
    return out
