"""The exported encoder: ``Encoder.from_pretrained(DIR).encode(texts, batch_size=..., instruction=None)``.

DIR (written by ``llm2comp export``) holds the causal LM with every stage's adapter merged, the memory
embeddings, the tokenizer and ``llm2comp_config.json``. Encoding is the training-time E: bidirectional
attention on [prefix, text, m_1..m_K], mean of the final hidden states at the memory positions (or, for
an export trained with mean / last pooling, those of the text tokens: ``trainer/modeling/pooling.py``).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
import torch

from data_prep.errors import UserError

CONFIG = "llm2comp_config.json"
FORMAT_VERSION = 1


def pooling_of(config: dict) -> str:
    """The export's pooling (exports before pooling was a setting describe memory pooling in words)."""
    from .modeling.pooling import POOLINGS

    pooling = config.get("pooling", "memory")
    return pooling if pooling in POOLINGS else "memory"


def load_attention(path: str, trained: Optional[str], device: str) -> str:
    """What training used where this machine and model can run it, else the best the model supports here
    (a model trained with flash-attn on a GPU is encoded with SDPA or eager on a CPU)."""
    from .modeling.attention import resolve_attention, supported_attention
    from .modeling.loading import load_config

    model_config = load_config(path)
    if trained == "flash_attention_2" and not device.startswith("cuda"):
        trained = None
    if trained and trained in supported_attention(model_config):
        try:
            return resolve_attention(trained, model_config)
        except UserError:
            pass
    return resolve_attention("auto", model_config)


class Encoder:
    def __init__(self, model, tokenizer, memory: Optional[torch.Tensor], config: dict):
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.device = next(model.parameters()).device
        self.pooling = pooling_of(config)
        self.memory = memory.to(self.device, next(model.parameters()).dtype) if memory is not None else None
        self.prefix_ids = torch.tensor(config["prefix_ids"], dtype=torch.long)
        self.pad_id = int(config["pad_id"])

    @classmethod
    def from_pretrained(cls, path: str, device: Optional[str] = None, dtype: Optional[str] = None) -> "Encoder":
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg_path = os.path.join(path, CONFIG)
        if not os.path.exists(cfg_path):
            raise UserError(f"{path}: no {CONFIG}; not an `llm2comp export` directory")
        with open(cfg_path) as fh:
            config = json.load(fh)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[dtype]
        if torch_dtype is None:
            torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        attention = load_attention(path, config.get("trained_attention"), device)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attention).to(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        memory_file = os.path.join(path, "memory.safetensors")
        memory = load_file(memory_file)["memory"] if pooling_of(config) == "memory" else None
        encoder = cls(model, tokenizer, memory, config)
        from .modeling.probe import check_bidirectional

        check_bidirectional(encoder.model, encoder.model.get_decoder(), model.config.get_text_config().vocab_size)
        return encoder

    @property
    def dimension(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def format(self, text: str, instruction: Optional[str]) -> str:
        if not instruction:
            return text
        return self.config["instruction_template"].format(instruction=instruction, query=text)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 32, instruction: Optional[str] = None,
               show_progress: bool = False, packing: Optional[int] = None, **_) -> np.ndarray:
        """float32 [len(texts), hidden]; texts are encoded longest first so batches carry little padding;
        ``packing``: tokens per packed row (a batch's texts end to end, no padding at all)."""
        from tqdm import tqdm

        from .data.padding import pad_right
        from .modeling.pooling import encode

        texts = [self.format(t, instruction) for t in texts]
        max_len = int(self.config.get("max_length", 512))
        ids = [x[:max_len] for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        decoder = self.model.get_decoder()
        embed = self.model.get_input_embeddings()
        for start in tqdm(range(0, len(order), batch_size), disable=not show_progress, unit="batch"):
            rows = order[start : start + batch_size]
            batch, lengths = pad_right([ids[i] or [self.pad_id] for i in rows], self.pad_id)
            emb = encode(decoder, embed, self.memory, self.prefix_ids, self.pad_id, batch.to(self.device),
                         lengths.to(self.device), self.pooling, packing=packing)
            out[rows] = emb.float().cpu().numpy()
        return out
