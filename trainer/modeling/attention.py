"""Bidirectional or causal attention, per call, for any Hugging Face decoder.

transformers (5.x) builds the attention mask inside the decoder's forward. Passing ``is_causal=False``
to that call makes the mask bidirectional while still masking padding, for the ``sdpa``, ``eager`` and
``flash_attention_2`` implementations. Setting ``is_causal`` on the attention modules instead would not
work with padding (the mask is built causally before they see it), and a flag on the module would leak
into the teacher calls that share the same weights. So the switch is an argument of each call, never
state: the encoder pass and the decoder/teacher passes differ only in what they pass here.
"""
from __future__ import annotations

import importlib.util

import torch

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")


def resolve_attention(choice: str) -> str:
    """``auto``: flash-attn 2 when installed and a GPU is present, else PyTorch's fused SDPA."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def run_decoder(decoder, *, bidirectional: bool, inputs_embeds=None, input_ids=None, attention_mask=None) -> torch.Tensor:
    """Final-layer hidden states (after the final norm) of the decoder stack, without the LM head."""
    out = decoder(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        is_causal=not bidirectional,
        use_cache=False,
    )
    return out.last_hidden_state
