"""From an encoder pass to one vector per text: the pooling choices, shared by training, export and encode.

- ``memory`` (LLM2Comp, the default): E on [prefix, text, m_1..m_K]; the mean of the K memory states.
- ``mean`` (LLM2Vec): E on [prefix, text]; the mean of the text tokens' final states (prefix excluded).
- ``last`` (E5-Mistral style): E on [prefix, text]; the final state of the text's last token.
Every choice reads the positions of its own row only, so an embedding does not depend on the batch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

POOLINGS = ("memory", "mean", "last")


def with_prefix(ids: torch.Tensor, lengths: torch.Tensor, prefix_ids: torch.Tensor):
    p = prefix_ids.numel()
    if p == 0:
        return ids, lengths
    return torch.cat([prefix_ids.to(ids.device).expand(ids.shape[0], -1), ids], 1), lengths + p


def text_states(decoder: nn.Module, embed, prefix_ids: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                bidirectional: bool = True, packing: Optional[int] = None) -> torch.Tensor:
    """Final hidden states of [prefix, text] (right-padded): [B, P + T, H]."""
    from .attention import run_decoder

    full, total = with_prefix(ids, lengths, prefix_ids)
    mask = (torch.arange(full.shape[1], device=full.device)[None, :] < total[:, None]).long()
    return run_decoder(decoder, bidirectional=bidirectional, inputs_embeds=embed(full), attention_mask=mask,
                       packing=packing)


def pool_text(hidden: torch.Tensor, lengths: torch.Tensor, p: int, pooling: str) -> torch.Tensor:
    """``mean`` or ``last`` over the text positions [p, p + length) of ``hidden`` [B, P + T, H]."""
    if pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), p + lengths - 1]
    pos = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
    text = ((pos >= p) & (pos < p + lengths[:, None])).to(hidden.dtype)
    return (hidden * text[..., None]).sum(1) / lengths[:, None].to(hidden.dtype)


def encode(decoder: nn.Module, embed, memory: Optional[torch.Tensor], prefix_ids: torch.Tensor, pad_id: int,
           ids: torch.Tensor, lengths: torch.Tensor, pooling: str, bidirectional: bool = True,
           packing: Optional[int] = None) -> torch.Tensor:
    """One embedding per text, [B, H], with ``pooling``; ``packing``: tokens per packed row (None: padded)."""
    from .memory import encode_memory

    if pooling == "memory":
        if memory is None:
            raise ValueError("pooling 'memory' needs memory tokens")
        return encode_memory(decoder, embed, memory, prefix_ids, pad_id, ids, lengths, packing).mean(1)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: expected one of {POOLINGS}")
    hidden = text_states(decoder, embed, prefix_ids, ids, lengths, bidirectional, packing)
    return pool_text(hidden, lengths, prefix_ids.numel(), pooling)
