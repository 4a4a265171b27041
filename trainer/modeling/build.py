"""From model settings to a Compressor and its tokenizer identity (what shards must match)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from data_prep.tokenizer import load_tokenizer, tokenizer_identity

from .compressor import Compressor, build_compressor
from .loading import load_causal_lm, resolve_model_path
from .settings import ModelSettings


def model_tokenizer(settings: ModelSettings):
    path = resolve_model_path(settings.tokenizer or settings.path)
    tok = load_tokenizer(path)
    return tok, tokenizer_identity(tok, path)


def build_model(settings: ModelSettings, seed: int = 0, lineage: Optional[dict] = None,
                memory: Optional[torch.Tensor] = None, device=None,
                embedding_delta: bool = False) -> tuple[Compressor, dict, dict]:
    """A Compressor with a fresh LoRA: on the base model, or (``lineage``) on the base with every earlier
    stage's adapter merged in, in order, and their input-embedding deltas folded into E's table. Returns it
    in training mode, the tokenizer identity and this model's lineage (which records the first token)."""
    from .first_token import resolve_first_token

    base_spec = lineage["base"] if lineage else {
        "path": settings.path, "name": settings.path, "random_init": settings.random_init,
        "config_overrides": dict(settings.config_overrides), "seed": seed,
    }
    if lineage and not settings.tokenizer:
        settings = replace(settings, tokenizer=base_spec["path"])
    tok, identity = model_tokenizer(settings)
    # A run from before first_token was a setting started every input with the tokenizer's own prefix.
    inherited = lineage.get("prefix_ids", identity["prefix_ids"]) if lineage else None
    prefix_ids = resolve_first_token(tok, identity, settings.first_token, inherited)
    base, path = load_causal_lm(base_spec["path"], settings.dtype, settings.attention,
                                base_spec["random_init"], base_spec["config_overrides"], base_spec["seed"], device)
    for adapter in (lineage or {}).get("adapters", []):
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    deltas = list((lineage or {}).get("embedding_deltas", []))
    if deltas:
        from .embedding_delta import fold_delta

        for delta in deltas:
            fold_delta(base.get_input_embeddings(), delta)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    k = memory.shape[0] if memory is not None else settings.memory_tokens
    model = build_compressor(base, k, prefix_ids, pad, settings.lora, seed, memory_init=memory,
                             pooling=settings.pooling, init_mode=settings.memory_init, embedding_delta=embedding_delta)
    model.train()  # from_pretrained returns eval mode, which would silently switch every dropout off
    base_spec = {**base_spec, "path": path}
    return model, identity, {"base": base_spec, "adapters": list((lineage or {}).get("adapters", [])),
                             "embedding_deltas": deltas, "prefix_ids": prefix_ids}


def prepare_for_training(model: Compressor, settings: ModelSettings, device, *, attention_dropout: float,
                         row_seeded: bool, gradient_checkpointing: bool, train_memory: bool = True,
                         memory_source: str = "fresh", prefix_ids: Optional[list[int]] = None,
                         compile: bool = False) -> dict:
    """Put the recipe's module-level settings where the modules read them, move the model to ``device``,
    check it is bidirectional where it must be, and read every setting back (``trainer/modeling/effective.py``).
    Returns the effective settings; any disagreement with the recipe stops here, in one line.

    ``row_seeded``: the contrastive stages, whose dropout (LoRA's and ``attention_dropout``) is drawn from
    row seeds so gradient caching stays exact. Stage 1 runs without attention dropout: its frozen teacher
    must give the same distribution the student is scored against. ``train_memory=False``: the stage's
    loss does not reach the memory tokens (mntp), or the stage keeps them as they are (stages 2-3 by default).
    ``memory_source``: where the memory embeddings came from (``fresh``: drawn by ``model.memory_init``);
    ``prefix_ids``: the first token ``model.first_token`` resolved to (the lineage's ``prefix_ids``);
    ``compile``: each decoder block compiled (``train.compile``), after the bidirectionality probe, so the
    probe checks the eager modules and the first compiled call is a training step."""
    from .adapters import enable_gradient_checkpointing
    from .attention import resolve_attention
    from .dropout import enable_row_seeded_dropout, set_attention_dropout
    from .effective import expected_for, verify

    resolved = resolve_attention(settings.attention, model.config)
    if row_seeded:
        enable_row_seeded_dropout(model, attention_dropout)
    else:
        set_attention_dropout(model.model, attention_dropout)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model.model, model.switch)
    if model.memory is not None and not train_memory:
        model.memory.weight.requires_grad_(False)
    model = model.to(device).train()
    probe = model.check_bidirectional()
    if compile:
        from .compile import compile_blocks

        compile_blocks(model.decoder)
    want = expected_for(settings, resolved, attention_dropout, row_seeded, train_memory,
                        prefix_ids=model.prefix_ids.tolist() if prefix_ids is None else list(prefix_ids),
                        memory_source=memory_source, compiled=compile)
    return verify(model, want, probe)
