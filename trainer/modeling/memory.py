"""The K learned memory-token input embeddings, spliced after each text (no vocabulary resize)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

MEMORY_INITS = ("sampled", "mean")


@torch.no_grad()
def initial_memory(embedding: nn.Module, vocab_size: int, k: int, seed: int = 0, mode: str = "sampled",
                   chunk: int = 8192) -> torch.Tensor:
    """K starting memory embeddings from the statistics of the real token embeddings.

    ``sampled`` (default): each slot drawn from N(mean, diag(std²)) of the vocabulary's embeddings, so the
    slots are distinct and at the scale of real tokens (on SmolLM2: norm ~3.3 against 3.2 for real tokens,
    pairwise cosine ~0.45 as between real tokens), where a vocabulary resize would put new tokens.
    ``mean``: the mean embedding plus 1e-2 x std noise; K near-copies of one point (pairwise cosine ~0.9999).

    The statistics are of the embedding module's *output* (memory vectors are spliced in after it), which
    differs from its weight in models that scale embeddings (Gemma multiplies by sqrt(hidden))."""
    if mode not in MEMORY_INITS:
        raise ValueError(f"memory init {mode!r}: expected one of {MEMORY_INITS}")
    mean, std = embedding_stats(embedding, vocab_size, chunk)
    g = torch.Generator().manual_seed(seed)
    # Drawn on the CPU (the same slots on every device and rank), also under a ``with torch.device(...)``.
    noise = torch.randn(k, mean.shape[0], generator=g, device="cpu").to(mean.device) * std
    return (mean + noise * (1.0 if mode == "sampled" else 1e-2)).to(embedding.weight.dtype)


@torch.no_grad()
def embedding_stats(embedding: nn.Module, vocab_size: int, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of the embedding module's output over the vocabulary (fp32)."""
    total = sq = None
    for start in range(0, vocab_size, chunk):
        ids = torch.arange(start, min(start + chunk, vocab_size), device=embedding.weight.device)
        out = embedding(ids).float()
        s, q = out.sum(0), (out * out).sum(0)
        total, sq = (s, q) if total is None else (total + s, sq + q)
    mean = total / vocab_size
    return mean, (sq / vocab_size - mean * mean).clamp_min(0).sqrt()


@torch.no_grad()
def slot_spread(memory: torch.Tensor, token_std: torch.Tensor) -> float:
    """How far the slots lie from their own centre, in units of the tokens' spread: mean_i |m_i - m̄| over
    |std| (the root of the tokens' total variance). 'sampled' slots: ~sqrt((K-1)/K); 'mean': ~0.01."""
    m = memory.detach().float()
    return float((m - m.mean(0)).norm(dim=-1).mean() / token_std.to(m.device).norm().clamp_min(1e-12))


def pairwise_cosine(memory: torch.Tensor) -> float:
    """Mean cosine similarity between distinct slots (1.0: all slots one direction)."""
    k = memory.shape[0]
    if k < 2:
        return 1.0
    x = nn.functional.normalize(memory.detach().float(), dim=-1)
    c = x @ x.T
    return float((c.sum() - c.diagonal().sum()) / (k * (k - 1)))


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
