"""Loading the base causal LM: a local HF folder or a name from the model store, real or randomly initialised."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from data_prep.errors import UserError

# Decoder families whose bidirectional switch and padding are covered by the test suite.
TESTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str, what: str = "model.path") -> str:
    """A local folder; a model-store name such as ``smollm2-135m`` (pulled on first use); or a Hugging Face
    Hub id (``meta-llama/Llama-2-7b-chat-hf``), through the Hub's cache (``data_prep/hub.py``)."""
    if os.path.isdir(path):
        return path
    from data_prep.hub import hub_snapshot, looks_like_hub_id

    from ..model_store import MODELS, pull

    if path in MODELS:
        return str(pull(path))
    if looks_like_hub_id(path):
        return hub_snapshot(path, what)
    raise UserError(f"{what} {path!r}: not a local folder, a model-store name ({', '.join(sorted(MODELS))}) "
                    "nor a Hugging Face Hub id (org/name)")


def load_config(path: str, overrides: Optional[dict] = None):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model.path {path}: unknown or unreadable architecture: {first}") from None
    if config.model_type not in TESTED_MODEL_TYPES:
        warnings.warn(f"model type {config.model_type!r} is not among the tested ones ({', '.join(sorted(TESTED_MODEL_TYPES))})")
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise UserError(f"model.config_overrides.{key}: {config.model_type} configs have no such field")
        setattr(config, key, value)
    return config


def load_causal_lm(path: str, dtype: str, attention: str = "auto", random_init: bool = False,
                   config_overrides: Optional[dict] = None, seed: int = 0, device=None):
    """The causal LM and its resolved path; ``attention`` is a recipe choice (``auto`` included), resolved
    for this model's class (``trainer/modeling/attention.py``).

    ``device``: where the weights go. On a GPU they are read from the safetensors files straight onto it
    (``device_map``) and random weights are drawn there, so a rank never holds a full host copy of a 7B
    base (eight ranks of a node would hold eight)."""
    from transformers import AutoModelForCausalLM

    from .attention import resolve_attention

    if dtype not in DTYPES:
        raise UserError(f"model.dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    path = resolve_model_path(path)
    config = load_config(path, config_overrides)
    attention = resolve_attention(attention, config)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if random_init:
        torch.manual_seed(seed)  # every rank builds the same random weights
        config._attn_implementation = attention
        with device:
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], attn_implementation=attention)
    else:
        model = from_pretrained(
            AutoModelForCausalLM, path, config=config, dtype=DTYPES[dtype], attn_implementation=attention,
            **({"device_map": {"": device}} if device.type != "cpu" else {}),
        )
    return model, path


def damaged_weights(path: str) -> Optional[str]:
    """``FILE: reason`` for the first weights file in ``path`` whose header or length is wrong, else None."""
    import glob

    from safetensors import safe_open

    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        try:
            with safe_open(f, "pt"):
                pass
        except Exception as e:  # noqa: BLE001  SafetensorError, OSError
            return f"{f}: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}"
    return None


def from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained``, with a damaged weights file (a copy cut short) named in one line."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception:
        bad = damaged_weights(path) if os.path.isdir(path) else None
        if bad:
            raise UserError(f"{bad} (a damaged or partly copied model; copy or fetch it again)") from None
        raise
