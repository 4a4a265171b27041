"""Typed settings of the model section of a recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ..config import ConfigError
from .adapters import LoraSettings


@dataclass
class ModelSettings:
    path: str = "smollm2-135m"  # local HF folder or a `llm2comp models` name
    tokenizer: Optional[str] = None  # default: the model's folder
    # auto: bfloat16 where the device computes it natively (GPUs, CPUs with AMX or AVX-512 BF16), else float32
    dtype: Literal["float32", "bfloat16", "auto"] = "bfloat16"
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    random_init: bool = False  # same architecture, random weights (tests, throughput benchmarks)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    pooling: Literal["memory", "mean", "last"] = "memory"  # memory: LLM2Comp; mean: LLM2Vec; last: E5-Mistral style
    memory_tokens: int = 8  # K, for memory pooling
    # The fixed token every input of E and D starts with (DESIGN.md §1): ``auto`` takes what the tokenizer
    # adds before a text (Llama's BOS), else its bos_token, else its eos_token; ``none`` starts with the
    # text itself; anything else names one vocabulary entry (SmolLM2: "<|endoftext|>"). A stage started from
    # an earlier run (``init.init_from``) keeps that run's token under ``auto``.
    first_token: str = "auto"
    # How the K memory slots start: ``sampled`` draws each from the input embeddings' per-dimension mean and
    # spread (distinct slots at the scale of real tokens); ``mean`` is the mean embedding plus a 1e-2 x std
    # perturbation (K near-copies of one point: the old behaviour, kept for the ablation).
    memory_init: Literal["sampled", "mean"] = "sampled"
    # Whether the memory embeddings train; None: the stage's default (stage 1 trains them, mntp cannot reach
    # them; stages 2-3 keep them frozen, as the authors' merge-and-reattach does).
    train_memory: Optional[bool] = None
    # Stage 1: a trainable delta on E's input embeddings (the authors train E's embedding table); D and the
    # LM head keep the base table. Later stages and export fold it into E's embeddings.
    train_input_embeddings: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> None:
        if self.memory_tokens <= 0:
            raise ConfigError(f"model.memory_tokens must be positive, got {self.memory_tokens}")
        if not self.first_token.strip():
            raise ConfigError("model.first_token is empty: give auto, none or one vocabulary entry")
        if self.lora.r <= 0:
            raise ConfigError(f"model.lora.r must be positive, got {self.lora.r}")
