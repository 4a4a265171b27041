"""The sentence-transformers module of an ``llm2comp export`` directory, so that
``SentenceTransformer(DIR, trust_remote_code=True)`` loads it (with llm2comp installed), ``.save(OTHER)``
writes a complete copy that loads again (so ``push_to_hub`` publishes a working model), and
``model_kwargs={"dtype": ..., "device_map": ...}`` decide how the weights load. Encoding is ``Encoder``'s,
exactly; sentence-transformers itself applies the export's prompts (``config_sentence_transformers.json``).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Optional

import torch
from torch import nn

from data_prep import jsonio


class LLM2CompModule(nn.Module):
    save_in_root = True  # the export directory is the model: weights, tokenizer and configs at its root

    def __init__(self, path: str, model_kwargs: Optional[dict] = None):
        super().__init__()
        from .encoder import load_export

        kwargs = dict(model_kwargs or {})
        device_map = kwargs.get("device_map")
        device = device_map.get("", "cpu") if isinstance(device_map, dict) else (device_map or "cpu")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        model, tokenizer, memory, config = load_export(path, str(device), dtype or "float32")
        self.path, self.config = path, config
        self.model, self.tokenizer = model, tokenizer
        self.register_buffer("memory", memory.to(next(model.parameters()).dtype) if memory is not None else None)
        self.register_buffer("prefix_ids", torch.tensor(config["prefix_ids"], dtype=torch.long), persistent=False)
        self.pad_id = int(config["pad_id"])
        from .encoder import pooling_of

        self.pooling = pooling_of(config)
        self.max_seq_length = int(config.get("max_length", 512))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, model_kwargs: Optional[dict] = None, **_: Any) -> "LLM2CompModule":
        """sentence-transformers' new-style loader: a local folder, or a Hub repo (its snapshot)."""
        path = model_name_or_path
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(model_name_or_path, revision=revision, token=token, cache_dir=cache_folder,
                                     local_files_only=local_files_only)
        return cls(os.path.join(path, subfolder) if subfolder else path, model_kwargs)

    def save(self, path: str, safe_serialization: bool = True, **_: Any) -> None:
        """Everything the directory needs to load again: the LM, memory, tokenizer, llm2comp config, and any
        adapters and the model card of the directory it was loaded from."""
        from safetensors.torch import save_file

        from .encoder import CONFIG

        os.makedirs(path, exist_ok=True)
        if os.path.abspath(path) == os.path.abspath(self.path):
            return  # saving onto itself: every file is already there
        config = dict(self.config)
        if config.get("adapter_only"):
            for adapter in config["adapters"]:
                shutil.copytree(os.path.join(self.path, adapter), os.path.join(path, adapter), dirs_exist_ok=True)
            for delta in config.get("embedding_deltas", []):
                os.makedirs(os.path.dirname(os.path.join(path, delta)), exist_ok=True)
                shutil.copyfile(os.path.join(self.path, delta), os.path.join(path, delta))
        else:
            self.model.save_pretrained(path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(path)
        if self.memory is not None:
            save_file({"memory": self.memory.detach().cpu().contiguous()}, os.path.join(path, "memory.safetensors"))
        with open(os.path.join(path, CONFIG), "w") as fh:
            jsonio.dump(config, fh, indent=2)
        card = os.path.join(self.path, "README.md")
        if os.path.exists(card) and not os.path.exists(os.path.join(path, "README.md")):
            shutil.copy(card, os.path.join(path, "README.md"))
        with open(os.path.join(path, "sentence_bert_config.json"), "w") as fh:
            jsonio.dump({"max_seq_length": self.max_seq_length, "do_lower_case": False}, fh, indent=2)

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def tokenize(self, texts, **_: Any) -> dict:
        from ..data.padding import pad_right

        texts = [t if isinstance(t, str) else " ".join(t) for t in texts]
        ids = [x[: self.max_seq_length] or [self.pad_id]
               for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        input_ids, lengths = pad_right(ids, self.pad_id)
        return {"input_ids": input_ids, "lengths": lengths}

    def forward(self, features: dict, **_: Any) -> dict:
        from ..modeling.pooling import encode

        features["sentence_embedding"] = encode(self.model.get_decoder(), self.model.get_input_embeddings(),
                                                self.memory, self.prefix_ids, self.pad_id, features["input_ids"],
                                                features["lengths"], self.pooling).float()
        return features
