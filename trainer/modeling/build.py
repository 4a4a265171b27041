"""From model settings to a Compressor and its tokenizer identity (what shards must match)."""
from __future__ import annotations

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


def build_model(settings: ModelSettings, seed: int = 0) -> tuple[Compressor, dict]:
    tok, identity = model_tokenizer(settings)
    base, _ = load_causal_lm(settings.path, settings.dtype, resolve_attention(settings.attention),
                             settings.random_init, settings.config_overrides, seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    model = build_compressor(base, settings.memory_tokens, identity["prefix_ids"], pad, settings.lora, seed)
    return model, identity
