"""Bidirectional or causal attention, per call, for any Hugging Face decoder; and which attention
implementation a model gets.

transformers (5.x) builds the attention mask inside the decoder's forward. Passing ``is_causal=False``
to that call makes the mask bidirectional while still masking padding, for the ``sdpa``, ``eager`` and
``flash_attention_2`` implementations. Setting ``is_causal`` on the attention modules instead would not
work with padding (the mask is built causally before they see it), and a flag on the module would leak
into the teacher calls that share the same weights. So the switch is an argument of each call, never
state: the encoder pass and the decoder/teacher passes differ only in what they pass here. Whether the
installed transformers honours it is checked at run time (``trainer/modeling/probe.py``).
"""
from __future__ import annotations

import torch

from data_prep.errors import UserError

ATTENTION_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")


def flash_attn_usable() -> bool:
    """flash-attn imports (a wheel built for another CUDA or torch fails at import, not at find_spec) and a GPU is there."""
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or an undefined symbol from a mismatched build
        return False
    return True


def supported_attention(config) -> list[str]:
    """The implementations this model's class declares, in order of preference."""
    from transformers import AutoModelForCausalLM

    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if cls is None:  # not a causal-LM architecture transformers knows: let it decide at load
        return ["flash_attention_2", "sdpa", "eager"]
    found = [name for name, flag in (("flash_attention_2", "_supports_flash_attn"), ("sdpa", "_supports_sdpa"))
             if getattr(cls, flag, False)]
    return [*found, "eager"]


def resolve_attention(choice: str, config) -> str:
    """``auto``: flash-attn 2 where it imports, a GPU is present and the model supports it; else PyTorch's
    fused SDPA where the model supports it (Gemma 2 does not: soft-capped logits); else eager. An explicit
    choice the model does not support is refused in one line."""
    supported = supported_attention(config)
    name = type(config).__name__.replace("Config", "")
    if choice == "auto":
        usable = [a for a in supported if a != "flash_attention_2" or flash_attn_usable()]
        return usable[0]
    if choice not in ATTENTION_CHOICES:
        raise UserError(f"model.attention {choice!r}: expected one of {', '.join(ATTENTION_CHOICES)}")
    if choice not in supported:
        raise UserError(f"model.attention {choice}: {name} does not support it (supported: {', '.join(supported)}); "
                        "use model.attention=auto")
    if choice == "flash_attention_2" and not flash_attn_usable():
        raise UserError("model.attention flash_attention_2: flash-attn does not import here or there is no GPU "
                        "(pip install '.[gpu]' on a GPU machine, or use model.attention=auto)")
    return choice


def run_decoder(decoder, *, bidirectional: bool, inputs_embeds=None, input_ids=None, attention_mask=None,
                packing: int | None = None) -> torch.Tensor:
    """Final-layer hidden states (after the final norm) of the decoder stack, without the LM head.

    ``attention_mask``: the right-padding mask [B, T]. ``packing``: tokens per packed row; the batch's
    sequences then run end to end without padding (``trainer/modeling/packing.py``) and the states come
    back in the padded layout (zeros at padding)."""
    if packing:
        return _run_packed(decoder, bidirectional, inputs_embeds, input_ids, attention_mask, packing)
    out = decoder(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        is_causal=not bidirectional,
        use_cache=False,
    )
    return out.last_hidden_state


def _run_packed(decoder, bidirectional: bool, inputs_embeds, input_ids, attention_mask, max_tokens: int) -> torch.Tensor:
    from . import packing
    from .row_dropout import packed_row_seeds

    if inputs_embeds is None:
        inputs_embeds = decoder.get_input_embeddings()(input_ids)
    b, t = inputs_embeds.shape[:2]
    lengths = attention_mask.sum(1) if attention_mask is not None else torch.full((b,), t, device=inputs_embeds.device)
    packing.check_windows(decoder.config, lengths)
    impl = decoder.config._attn_implementation
    flash = impl.startswith("flash_attention")
    lay = packing.layout(lengths, max_tokens, one_row=flash)
    kwargs = {}
    if flash:  # variable-length kernels: sequence boundaries as cumulative lengths, no mask
        ends = torch.cumsum(lengths, 0)  # one row, the sequences in batch order
        cu = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
        longest = int(lengths.max())
        kwargs = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        mask = None
    else:
        eager = impl == "eager" or impl.endswith("_eager")
        mask = packing.block_mask(lay, causal=not bidirectional,
                                  additive_dtype=inputs_embeds.dtype if eager else None)
    with packed_row_seeds(lay.sequence, lay.position_ids):
        out = decoder(inputs_embeds=packing.pack(inputs_embeds, lay), attention_mask=mask,
                      position_ids=lay.position_ids, is_causal=not bidirectional, use_cache=False, **kwargs)
    return packing.unpack(out.last_hidden_state, lay, t)
