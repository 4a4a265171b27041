"""Gradient caching (Gao et al. 2021; DESIGN.md §4) on DeepSpeed: memory O(chunk), not O(batch).

1. encode the rank's rows chunk by chunk without a graph;
2. gather every rank's embeddings, compute the global loss and its gradient w.r.t. this rank's rows;
3. encode each chunk again with a graph and back-propagate the cached gradient: each chunk is one
   DeepSpeed micro-step, so ZeRO-2/3 reduce gradients exactly as for gradient accumulation.
When the rows fit in one chunk, pass 1 keeps its graph and pass 3 is only its backward: no second forward.
Chunks are cut from the rows sorted by length (longest first), so each chunk pads to a length near its
own rows' instead of the batch's longest: the loss only sees the embeddings, put back in batch order, so
the order in which rows are encoded changes no gradient (tested), only the padded tokens computed.
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

    def by_length(self) -> tuple["Rows", torch.Tensor]:
        """The rows longest first (stable) and the order that did it: ``sorted[i] = self[order[i]]``."""
        order = torch.sort(self.lengths, descending=True, stable=True).indices
        return Rows(self.ids[order], self.lengths[order], self.seeds[order]), order

    def padded_tokens(self, size: int, group_by_length: bool = True) -> int:
        """Token positions the encoder computes for these rows in chunks of ``size`` (padding included)."""
        rows = self.by_length()[0] if group_by_length else self
        return sum(len(c) * c.ids.shape[1] for c in rows.chunks(size))


def encode(embed: Callable, rows: Rows) -> torch.Tensor:
    with row_seeds(rows.seeds):
        return embed(rows.ids, rows.lengths)


@torch.no_grad()
def encode_without_graph(embed: Callable, rows: Rows, chunk: int, group_by_length: bool = True) -> torch.Tensor:
    """The rows' embeddings in their own order, encoded ``chunk`` rows at a time (longest rows together)."""
    if not group_by_length:
        return torch.cat([encode(embed, c) for c in rows.chunks(chunk)])
    ordered, order = rows.by_length()
    out = torch.cat([encode(embed, c) for c in ordered.chunks(chunk)])
    return out[torch.argsort(order)]


def first_pass(embed: Callable, rows: Rows, chunk: int, group_by_length: bool = True
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pass 1: (embeddings without a graph, None); or, when the rows fit one chunk, (embeddings, the same
    embeddings with their graph) for ``replay(kept=...)``."""
    if len(rows) <= chunk:
        kept = encode(embed, rows)
        return kept.detach(), kept
    return encode_without_graph(embed, rows, chunk, group_by_length), None


def loss_and_row_gradients(local: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]):
    """The global loss and d(loss)/d(local rows), from embeddings computed without a graph."""
    leaf = local.detach().float().requires_grad_(True)
    loss = loss_fn(leaf)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def replay(embed: Callable, rows: Rows, grad: torch.Tensor, chunk: int, backward: Callable, step: Callable,
           kept: Optional[torch.Tensor] = None, group_by_length: bool = True) -> None:
    """Re-encode chunk by chunk with a graph and push ``grad`` (rows in their own order) through: one
    backward and step per chunk, in the chunks of ``first_pass`` (or, with ``kept`` from it, one backward
    through the graph it kept)."""
    if kept is not None:
        backward((kept * grad.to(kept.dtype)).sum())
        step()
        return
    if group_by_length:
        rows, order = rows.by_length()
        grad = grad[order]
    start = 0
    for c in rows.chunks(chunk):
        emb = encode(embed, c)
        g = grad[start : start + len(c)].to(emb.dtype)
        start += len(c)
        backward((emb * g).sum())
        step()
