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
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    random_init: bool = False  # same architecture, random weights (tests, throughput benchmarks)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    pooling: Literal["memory", "mean", "last"] = "memory"  # memory: LLM2Comp; mean: LLM2Vec; last: E5-Mistral style
    memory_tokens: int = 8  # K, for memory pooling
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> None:
        if self.memory_tokens <= 0:
            raise ConfigError(f"model.memory_tokens must be positive, got {self.memory_tokens}")
        if self.lora.r <= 0:
            raise ConfigError(f"model.lora.r must be positive, got {self.lora.r}")
