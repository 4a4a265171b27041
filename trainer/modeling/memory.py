"""The K learned memory-token input embeddings, spliced after each text (no vocabulary resize)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


@torch.no_grad()
def initial_memory(embedding: nn.Module, vocab_size: int, k: int, seed: int = 0, chunk: int = 8192) -> torch.Tensor:
    """Near the mean input embedding, as a vocabulary resize with mean initialisation would place new
    tokens; a tiny seeded perturbation keeps the K slots distinct.

    The statistics are of the embedding module's *output* (memory vectors are spliced in after it), which
    differs from its weight in models that scale embeddings (Gemma multiplies by sqrt(hidden))."""
    total = sq = None
    for start in range(0, vocab_size, chunk):
        ids = torch.arange(start, min(start + chunk, vocab_size), device=embedding.weight.device)
        out = embedding(ids).float()
        s, q = out.sum(0), (out * out).sum(0)
        total, sq = (s, q) if total is None else (total + s, sq + q)
    mean = total / vocab_size
    std = (sq / vocab_size - mean * mean).clamp_min(0).sqrt()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(k, mean.shape[0], generator=g).to(mean.device) * std * 1e-2
    return (mean + noise).to(embedding.weight.dtype)


def splice_after_text(embeds: torch.Tensor, lengths: torch.Tensor, memory: torch.Tensor):
    """Put ``memory`` [K, H] right after each row's ``lengths`` tokens of ``embeds`` [B, T+K, H].

    Returns the new embeddings, the boolean memory-position mask [B, T+K] and the attention mask.
    The positions of text and memory do not depend on the batch's padding, so neither does the result.
    """
    k = memory.shape[0]
    pos = torch.arange(embeds.shape[1], device=embeds.device)
    slot = pos[None, :] - lengths[:, None]
    is_memory = (slot >= 0) & (slot < k)
    spliced = torch.where(is_memory[..., None], memory.to(embeds.dtype)[slot.clamp(0, k - 1)], embeds)
    attention_mask = (pos[None, :] < (lengths + k)[:, None]).long()
    return spliced, is_memory, attention_mask


def encode_memory(decoder: nn.Module, embed, memory: torch.Tensor, prefix_ids: torch.Tensor, pad_id: int,
                  ids: torch.Tensor, lengths: torch.Tensor, packing: Optional[int] = None) -> torch.Tensor:
    """E on [prefix, text, m_1..m_K] (right-padded ids): final hidden states at the memory positions, [B, K, H].

    Shared by training (adapter on) and the exported encoder (adapter merged)."""
    from .attention import run_decoder
    from .pooling import with_prefix

    k = memory.shape[0]
    ids, lengths = with_prefix(ids, lengths, prefix_ids)
    ids = nn.functional.pad(ids, (0, k), value=pad_id)
    embeds, is_memory, mask = splice_after_text(embed(ids), lengths, memory)
    hidden = run_decoder(decoder, bidirectional=True, inputs_embeds=embeds, attention_mask=mask, packing=packing)
    return hidden[is_memory].view(ids.shape[0], k, -1)


class MemoryTokens(nn.Module):
    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.clone())

    @property
    def k(self) -> int:
        return self.weight.shape[0]
