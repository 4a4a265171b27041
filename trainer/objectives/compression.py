"""Stage-1 objectives (DESIGN.md §1): ``kl`` (default), ``nll`` and ``rc``, each averaged over a sample's
target tokens, then over the samples."""
from __future__ import annotations

import torch

from .vocab_loss import chunked_vocab_loss

OBJECTIVES = ("kl", "nll", "rc")


def per_token_weights(lengths: torch.Tensor) -> torch.Tensor:
    """1 / (L_i · B) for every target token of sample i, packed like the hidden states."""
    b = lengths.shape[0]
    return torch.repeat_interleave(1.0 / (lengths.float() * b), lengths)


def compression_loss(model, objective: str, batch: dict) -> torch.Tensor:
    """batch: ``context``/``context_len``, ``continuation``/``continuation_len`` (right-padded ids)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: expected one of {OBJECTIVES}")
    chunk = model.loss_chunk
    memory = model.memory_states(batch["context"], batch["context_len"])
    if objective == "rc":
        targets, lengths = batch["context"], batch["context_len"]
    else:
        targets, lengths = batch["continuation"], batch["continuation_len"]
    student = model.decoder_hidden(memory, targets, lengths)
    weights = per_token_weights(lengths)
    if objective == "kl":
        teacher = model.teacher_hidden(batch["context"], batch["context_len"], targets, lengths)
        return chunked_vocab_loss(student, weights, model.logits, teacher_hidden=teacher, chunk=chunk)
    packed = targets[torch.arange(targets.shape[1], device=targets.device)[None, :] < lengths[:, None]]
    return chunked_vocab_loss(student, weights, model.logits, targets=packed, chunk=chunk)
