"""From model settings to a Compressor and its tokenizer identity (what shards must match)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from data_prep.tokenizer import load_tokenizer, tokenizer_identity

from .attention import resolve_attention
from .compressor import Compressor, build_compressor
from .loading import load_causal_lm, resolve_model_path
from .settings import ModelSettings


def model_tokenizer(settings: ModelSettings):
    path = resolve_model_path(settings.tokenizer or settings.path)
    tok = load_tokenizer(path)
    return tok, tokenizer_identity(tok, path)


def build_model(settings: ModelSettings, seed: int = 0, lineage: Optional[dict] = None,
                memory: Optional[torch.Tensor] = None) -> tuple[Compressor, dict, dict]:
    """A Compressor with a fresh LoRA: on the base model, or (``lineage``) on the base with every earlier
    stage's adapter merged in, in order. Returns it in training mode, the tokenizer identity and this
    model's lineage."""
    base_spec = lineage["base"] if lineage else {
        "path": settings.path, "random_init": settings.random_init,
        "config_overrides": dict(settings.config_overrides), "seed": seed,
    }
    if lineage and not settings.tokenizer:
        settings = replace(settings, tokenizer=base_spec["path"])
    tok, identity = model_tokenizer(settings)
    base, path = load_causal_lm(base_spec["path"], settings.dtype, resolve_attention(settings.attention),
                                base_spec["random_init"], base_spec["config_overrides"], base_spec["seed"])
    for adapter in (lineage or {}).get("adapters", []):
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    k = memory.shape[0] if memory is not None else settings.memory_tokens
    model = build_compressor(base, k, identity["prefix_ids"], pad, settings.lora, seed, memory_init=memory)
    model.train()  # from_pretrained returns eval mode, which would silently switch every dropout off
    base_spec = {**base_spec, "path": path}
    return model, identity, {"base": base_spec, "adapters": list((lineage or {}).get("adapters", []))}
