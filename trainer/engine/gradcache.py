"""Gradient caching (Gao et al. 2021; DESIGN.md §4) on DeepSpeed: memory O(chunk), not O(batch).

1. encode the rank's rows chunk by chunk without a graph;
2. gather every rank's embeddings, compute the global loss and its gradient w.r.t. this rank's rows;
3. encode each chunk again with a graph and back-propagate the cached gradient: each chunk is one
   DeepSpeed micro-step, so ZeRO-2/3 reduce gradients exactly as for gradient accumulation.
When the rows fit in one chunk, pass 1 keeps its graph and pass 3 is only its backward: no second forward.
Dropout masks come from row seeds (``trainer/modeling/row_dropout.py``), so passes 1 and 3 and an
uncached full-batch pass all see the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..modeling.row_dropout import row_seeds


@dataclass
class Rows:
    """The texts one rank encodes for one batch: right-padded ids, lengths and a dropout seed per row."""

    ids: torch.Tensor
    lengths: torch.Tensor
    seeds: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def chunks(self, size: int) -> Iterator["Rows"]:
        for s in range(0, len(self), size):
            lengths = self.lengths[s : s + size]
            width = max(1, int(lengths.max()))  # trim padding to the chunk's longest row
            yield Rows(self.ids[s : s + size, :width], lengths, self.seeds[s : s + size])


def encode(embed: Callable, rows: Rows) -> torch.Tensor:
    with row_seeds(rows.seeds):
        return embed(rows.ids, rows.lengths)


@torch.no_grad()
def encode_without_graph(embed: Callable, rows: Rows, chunk: int) -> torch.Tensor:
    return torch.cat([encode(embed, c) for c in rows.chunks(chunk)])


def first_pass(embed: Callable, rows: Rows, chunk: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pass 1: (embeddings without a graph, None); or, when the rows fit one chunk, (embeddings, the same
    embeddings with their graph) for ``replay(kept=...)``."""
    if len(rows) <= chunk:
        kept = encode(embed, rows)
        return kept.detach(), kept
    return encode_without_graph(embed, rows, chunk), None


def loss_and_row_gradients(local: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]):
    """The global loss and d(loss)/d(local rows), from embeddings computed without a graph."""
    leaf = local.detach().float().requires_grad_(True)
    loss = loss_fn(leaf)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def replay(embed: Callable, rows: Rows, grad: torch.Tensor, chunk: int, backward: Callable, step: Callable,
           kept: Optional[torch.Tensor] = None) -> None:
    """Re-encode chunk by chunk with a graph and push ``grad`` through: one backward and step per chunk
    (or, with ``kept`` from ``first_pass``, one backward through the graph it kept)."""
    if kept is not None:
        backward((kept * grad.to(kept.dtype)).sum())
        step()
        return
    start = 0
    for c in rows.chunks(chunk):
        emb = encode(embed, c)
        g = grad[start : start + len(c)].to(emb.dtype)
        start += len(c)
        backward((emb * g).sum())
        step()
