"""The bidirectionality self-check run before training and when an encoder is loaded.

The encoder's bidirectional attention rests on how the installed transformers merges a per-call
``is_causal=False`` into its mask builders and kernels; after an upgrade, or under another attention
kernel, attention can silently stay causal (the failure LLM2Vec's users report most). One short probe
forward through the very ``run_decoder`` calls training makes: two rows that differ only in their last
token. In the encoder call position 0 must move; in the causal calls it must not move at all.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from data_prep.errors import UserError

from .attention import run_decoder

PROBE_TOKENS = 4
# Relative change of position 0's final hidden state. Causal: the masked keys get exactly zero weight, so
# the change is rounding at most; bidirectional: one of four tokens changed moves it far more than rounding.
CAUSAL_MAX = 1e-3
ENCODER_MIN = 1e-3


class NotBidirectional(UserError):
    pass


def _probe_ids(vocab_size: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    lo = min(10, vocab_size - 2)  # clear of the usual special tokens
    ids = torch.randint(lo, vocab_size, (1, PROBE_TOKENS), generator=g).repeat(2, 1)
    ids[1, -1] = lo + (int(ids[0, -1]) - lo + 1 + vocab_size // 2) % (vocab_size - lo)
    return ids.to(device)


def _change(decoder, ids: torch.Tensor, bidirectional: bool) -> float:
    mask = torch.ones_like(ids)
    hidden = run_decoder(decoder, bidirectional=bidirectional, input_ids=ids, attention_mask=mask).float()
    first, second = hidden[0, 0], hidden[1, 0]
    return float((first - second).norm() / first.norm().clamp_min(1e-12))


@torch.no_grad()
def check_bidirectional(model: torch.nn.Module, decoder: torch.nn.Module, vocab_size: int,
                        adapters: Callable[[bool], contextlib.AbstractContextManager] | None = None) -> dict:
    """Raise ``NotBidirectional`` (one line: transformers version, attention implementation, the measured
    changes) unless the encoder call is bidirectional and the causal call is causal. ``adapters(on)``
    switches the LoRA adapter for the encoder (on) and decoder/teacher (off) calls. Runs in eval mode
    (dropout would move every position) and restores the mode."""
    import transformers

    switch = adapters or (lambda on: contextlib.nullcontext())
    device = next(decoder.parameters()).device
    ids = _probe_ids(vocab_size, device)
    was_training = model.training
    model.eval()
    try:
        with switch(True):
            encoder = _change(decoder, ids, bidirectional=True)
        with switch(False):
            causal = _change(decoder, ids, bidirectional=False)
    finally:
        model.train(was_training)
    result = {"encoder_change": encoder, "causal_change": causal}
    problems = []
    if not encoder > ENCODER_MIN:
        problems.append(f"the encoder call is causal (position 0 moved {encoder:.2g} when the last token changed)")
    if not causal <= CAUSAL_MAX:
        problems.append(f"the causal call sees later tokens (position 0 moved {causal:.2g})")
    if problems:
        impl = getattr(getattr(decoder, "config", None), "_attn_implementation", "?")
        raise NotBidirectional(f"bidirectionality check failed with transformers {transformers.__version__}, "
                               f"attention {impl}: {'; '.join(problems)}")
    return result
