"""The K learned memory-token input embeddings, spliced after each text (no vocabulary resize)."""
from __future__ import annotations

import torch
from torch import nn


def initial_memory(input_embeddings: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Near the mean input embedding, as a vocabulary resize with mean initialisation would place new
    tokens; a tiny seeded perturbation keeps the K slots distinct."""
    weight = input_embeddings.detach().float()
    mean, std = weight.mean(0), weight.std(0)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(k, weight.shape[1], generator=g) * std * 1e-2
    return (mean + noise).to(input_embeddings.dtype)


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


class MemoryTokens(nn.Module):
    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.clone())

    @property
    def k(self) -> int:
        return self.weight.shape[0]
