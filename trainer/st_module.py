"""The sentence-transformers module of an ``llm2comp export`` directory, so that
``SentenceTransformer(DIR)`` loads it (with llm2comp installed). Encoding is ``Encoder``'s, exactly."""
from __future__ import annotations

import torch
from torch import nn


class LLM2CompModule(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        from .encoder import Encoder

        enc = Encoder.from_pretrained(path, device="cpu", dtype="float32")
        self.path, self.config = path, enc.config
        self.model, self.tokenizer = enc.model, enc.tokenizer
        self.register_buffer("memory", enc.memory.clone() if enc.memory is not None else None)
        self.register_buffer("prefix_ids", enc.prefix_ids.clone(), persistent=False)
        self.pad_id, self.pooling, self.dimension = enc.pad_id, enc.pooling, enc.dimension

    @staticmethod
    def load(path: str) -> "LLM2CompModule":
        return LLM2CompModule(path)

    def save(self, path: str, **_) -> None:  # the export directory already holds every file
        pass

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    def tokenize(self, texts, **_) -> dict:
        from .data.padding import pad_right

        max_len = int(self.config.get("max_length", 512))
        ids = [x[:max_len] or [self.pad_id] for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        input_ids, lengths = pad_right(ids, self.pad_id)
        return {"input_ids": input_ids, "lengths": lengths}

    def forward(self, features: dict, **_) -> dict:
        from .modeling.pooling import encode

        features["sentence_embedding"] = encode(self.model.get_decoder(), self.model.get_input_embeddings(),
                                                self.memory, self.prefix_ids, self.pad_id, features["input_ids"],
                                                features["lengths"], self.pooling).float()
        return features
