"""Architectures the benchmark builds (offline, random weights), their dimensions, and the defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1024 * 1024
MEMORY_TOKENS = 8
SEED = 0

# Architectures, offline: (transformers config class, its fields, prefix ids the tokenizer adds (BOS)).
ARCHS = {
    "llama2-7b": ("LlamaConfig", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=32, intermediate_size=11008, vocab_size=32000,
                                      max_position_embeddings=4096, tie_word_embeddings=False), [1]),
    "llama3-8b": ("LlamaConfig", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                      rope_theta=500000.0, max_position_embeddings=8192,
                                      tie_word_embeddings=False), [128000]),
    "mistral-7b": ("MistralConfig", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=8, intermediate_size=14336, vocab_size=32000,
                                         max_position_embeddings=32768, sliding_window=4096,
                                         tie_word_embeddings=False), [1]),
    "qwen2-1.5b": ("Qwen2Config", dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                                       num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                                       rope_theta=1000000.0, max_position_embeddings=32768,
                                       tie_word_embeddings=True), []),
    "smollm2-135m": ("LlamaConfig", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                         rope_theta=100000.0, max_position_embeddings=8192,
                                         tie_word_embeddings=True), []),
    # CPU smoke runs; a BOS prefix like Llama's so the prefix path is exercised.
    "tiny": ("LlamaConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, vocab_size=49152,
                                 max_position_embeddings=2048, tie_word_embeddings=True), [1]),
}

# Recipe values (launch/recipes/llama2-7b-*.yaml) as CUDA defaults; smaller ones keep CPU runs short.
DEFAULT_MICRO_BATCH = {"cuda": {"pretrain": 4, "ucl": 16, "scl": 128, "encode": 32},
                       "cpu": {"pretrain": 4, "ucl": 8, "scl": 4, "encode": 16}}
DEFAULT_STEPS = {"cuda": dict(seq=512, steps=20, warmup=3), "cpu": dict(seq=128, steps=5, warmup=1)}
# CPU: chunks smaller than a batch's rows, so that smoke runs go through gradient caching.
DEFAULT_CHUNK = {"cuda": {"ucl": 16, "scl": 32}, "cpu": {"ucl": 4, "scl": 4}}
DEFAULT_ATTENTION_DROPOUT = {"ucl": 0.2, "scl": 0.0}


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


def dims_of(name: str) -> Dims:
    c = ARCHS[name][1]
    heads = c["num_attention_heads"]
    return Dims(c["hidden_size"], c["num_hidden_layers"], heads, c.get("num_key_value_heads", heads),
                c["hidden_size"] // heads, c["intermediate_size"], c["vocab_size"])
