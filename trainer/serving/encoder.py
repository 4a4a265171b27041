"""The exported encoder: ``Encoder.from_pretrained(DIR).encode(texts, ...)``, with the arguments of
sentence-transformers' ``encode`` that matter, plus ``encode_query`` / ``encode_document``.

DIR (written by ``llm2comp export``) holds either the causal LM with every stage's adapter merged, or
(``--adapter-only``) each stage's PEFT adapter to apply to the base model, named in its config; the
memory embeddings (memory pooling), the tokenizer and ``llm2comp_config.json``. Encoding is the
training-time E: bidirectional attention on [prefix, text, m_1..m_K], mean of the final hidden states at
the memory positions (or, for an export trained with mean / last pooling, those of the text tokens:
``trainer/modeling/pooling.py``).

Instructions: ``instruction=TEXT`` formats a text with the run's instruction template (what training on
pairs did); ``prompt=TEXT`` / ``prompt_name=NAME`` prepend a literal prefix, as sentence-transformers does
(the export's ``config_sentence_transformers.json`` names the ``query`` and ``document`` prompts).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from data_prep.errors import UserError

CONFIG = "llm2comp_config.json"
ST_CONFIG = "config_sentence_transformers.json"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pooling_of(config: dict) -> str:
    """The export's pooling (exports before pooling was a setting describe memory pooling in words)."""
    from ..modeling.pooling import POOLINGS

    pooling = config.get("pooling", "memory")
    return pooling if pooling in POOLINGS else "memory"


def load_attention(model_config, trained: Optional[str], device: str) -> str:
    """What training used where this machine and model can run it, else the best the model supports here
    (a model trained with flash-attn on a GPU is encoded with SDPA or eager on a CPU)."""
    from ..modeling.attention import resolve_attention, supported_attention

    if trained == "flash_attention_2" and not device.startswith("cuda"):
        trained = None
    if trained and trained in supported_attention(model_config):
        try:
            return resolve_attention(trained, model_config)
        except UserError:
            pass
    return resolve_attention("auto", model_config)


def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, CONFIG)
    if not os.path.exists(cfg_path):
        raise UserError(f"{path}: no {CONFIG}; not an `llm2comp export` directory")
    with open(cfg_path) as fh:
        return json.load(fh)


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}: expected one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_export(path: str, device: str, dtype=None, base_model: Optional[str] = None):
    """(causal LM on ``device`` in ``dtype``, tokenizer, memory or None, config) of an export directory.
    An adapter-only export loads its base (``base_model`` overrides the name it records) and applies
    every stage's adapter in order, as training built it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = read_config(path)
    torch_dtype = resolve_dtype(dtype, device)
    on_device = {"device_map": {"": device}} if device.startswith("cuda") else {}
    if config.get("adapter_only"):
        from peft import PeftModel

        from ..modeling.loading import load_causal_lm, load_config, resolve_model_path

        base = config["base_model"]
        name = base_model or base["name"]
        model_config = load_config(resolve_model_path(name), base.get("config_overrides"))
        attention = load_attention(model_config, config.get("trained_attention"), device)
        dtype_name = {v: k for k, v in DTYPES.items()}[torch_dtype]
        model, _ = load_causal_lm(name, dtype_name, attention, base.get("random_init", False),
                                  base.get("config_overrides"), base.get("seed", 0), device=device)
        for adapter in config["adapters"]:
            model = PeftModel.from_pretrained(model, os.path.join(path, adapter)).merge_and_unload()
        if config.get("embedding_deltas"):
            from ..modeling.embedding_delta import fold_delta

            for delta in config["embedding_deltas"]:
                fold_delta(model.get_input_embeddings(), os.path.join(path, delta))
    else:
        from ..modeling.loading import from_pretrained, load_config

        attention = load_attention(load_config(path), config.get("trained_attention"), device)
        model = from_pretrained(AutoModelForCausalLM, path, dtype=torch_dtype, attn_implementation=attention, **on_device)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    memory = None
    if pooling_of(config) == "memory":
        memory = load_file(os.path.join(path, "memory.safetensors"))["memory"]
    return model, tokenizer, memory, config


def read_prompts(path: str) -> dict:
    """The ``prompts`` of the export's ``config_sentence_transformers.json`` ({} if it has none)."""
    p = os.path.join(path, ST_CONFIG)
    if not os.path.exists(p):
        return {}
    with open(p) as fh:
        return dict(json.load(fh).get("prompts") or {})


class Encoder:
    def __init__(self, model, tokenizer, memory: Optional[torch.Tensor], config: dict, prompts: Optional[dict] = None):
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.device = next(model.parameters()).device
        self.pooling = pooling_of(config)
        self.memory = memory.to(self.device, next(model.parameters()).dtype) if memory is not None else None
        self.prefix_ids = torch.tensor(config["prefix_ids"], dtype=torch.long)
        self.pad_id = int(config["pad_id"])
        self.prompts = dict(prompts or {})
        self._max_seq_length: Optional[int] = None

    @classmethod
    def from_pretrained(cls, path: str, device: Optional[str] = None, dtype=None,
                        base_model: Optional[str] = None, compile: bool = False) -> "Encoder":
        """``dtype``: auto (bf16 on a GPU, fp32 on a CPU), float32, bfloat16 or a torch dtype; ``base_model``:
        for an adapter-only export, where its base is (default: the name the export records); ``compile``:
        ``torch.compile`` each decoder block (as ``train.compile``; ``compiled_blocks`` reads it back)."""
        from ..modeling.probe import check_bidirectional

        from data_prep.hub import local_folder

        path = local_folder(path, "model")  # a folder, or an export published on the Hub
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, memory, config = load_export(path, device, dtype, base_model)
        encoder = cls(model, tokenizer, memory, config, read_prompts(path))
        check_bidirectional(encoder.model, encoder.model.get_decoder(), model.config.get_text_config().vocab_size)
        if compile:  # after the probe, which must see the eager attention path
            from ..modeling.compile import compile_blocks

            compile_blocks(encoder.model.get_decoder())
        return encoder

    @property
    def compiled_blocks(self) -> list[int]:
        """[compiled, total] decoder blocks: that ``compile`` took effect."""
        from ..modeling.compile import compiled_blocks, decoder_blocks

        decoder = self.model.get_decoder()
        return [compiled_blocks(decoder), len(decoder_blocks(decoder))]

    @property
    def dimension(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def get_sentence_embedding_dimension(self) -> int:
        return self.dimension

    @property
    def max_seq_length(self) -> int:
        """Tokens of a text (instruction included) the encoder reads: the export's ``max_length`` unless set, as
        on a sentence-transformers model (``enc.max_seq_length = 512``; ``eval mteb --max-length``)."""
        return int(self._max_seq_length or self.config.get("max_length", 512))

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"max_seq_length {value}: must be at least 1")
        self._max_seq_length = int(value)

    def format(self, text: str, instruction: Optional[str]) -> str:
        if not instruction:
            return text
        return self.config["instruction_template"].format(instruction=instruction, query=text)

    def _prefix(self, prompt: Optional[str], prompt_name: Optional[str], instruction: Optional[str]) -> Optional[str]:
        if sum(x is not None for x in (prompt, prompt_name, instruction)) > 1:
            raise ValueError("give at most one of prompt, prompt_name and instruction")
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r}: this encoder's prompts are "
                                 f"{', '.join(map(repr, self.prompts)) or 'none'}")
            return self.prompts[prompt_name]
        return prompt

    @torch.no_grad()
    def encode(self, sentences: Union[str, Sequence[str]], batch_size: int = 32, *, prompt_name: Optional[str] = None,
               prompt: Optional[str] = None, instruction: Optional[str] = None, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, show_progress_bar: bool = False,
               packing: Optional[int] = None):
        """Embeddings [N, hidden] (float32; a single string gives [hidden]). Texts are encoded longest first so
        batches carry little padding; ``packing``: tokens per packed row (a batch's texts end to end, no
        padding at all). ``convert_to_tensor``: a torch tensor on the encoder's device, else numpy."""
        from tqdm import tqdm

        from ..data.padding import pad_right
        from ..modeling.pooling import encode

        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        prefix = self._prefix(prompt, prompt_name, instruction)
        texts = [self.format(t, instruction) for t in texts]
        if prefix:
            texts = [prefix + t for t in texts]
        max_len = self.max_seq_length
        ids = [x[:max_len] for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        out = torch.zeros(len(texts), self.dimension, dtype=torch.float32, device=self.device)
        decoder, embed = self.model.get_decoder(), self.model.get_input_embeddings()
        for start in tqdm(range(0, len(order), batch_size), disable=not show_progress_bar, unit="batch"):
            rows = order[start : start + batch_size]
            batch, lengths = pad_right([ids[i] or [self.pad_id] for i in rows], self.pad_id)
            emb = encode(decoder, embed, self.memory, self.prefix_ids, self.pad_id, batch.to(self.device),
                         lengths.to(self.device), self.pooling, packing=packing)
            out[torch.as_tensor(rows, device=self.device)] = emb.float()
        if normalize_embeddings:
            out = torch.nn.functional.normalize(out, dim=-1)
        if single:
            out = out[0]
        if convert_to_tensor:
            return out
        return out.cpu().numpy() if convert_to_numpy else list(out.cpu())

    def encode_query(self, sentences, batch_size: int = 32, *, instruction: Optional[str] = None, **kwargs):
        """Queries: with ``instruction`` (the run's template) or else the export's ``query`` prompt."""
        if instruction is None and "prompt" not in kwargs and "prompt_name" not in kwargs and self.prompts.get("query"):
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, batch_size, instruction=instruction, **kwargs)

    def encode_document(self, sentences, batch_size: int = 32, **kwargs):
        """Documents: no instruction (the export's ``document`` prompt, if it has one)."""
        if "prompt" not in kwargs and "prompt_name" not in kwargs and self.prompts.get("document"):
            kwargs["prompt_name"] = "document"
        return self.encode(sentences, batch_size, **kwargs)

    def similarity(self, a, b) -> torch.Tensor:
        """Cosine similarity of every row of ``a`` with every row of ``b`` (the export's similarity)."""
        a, b = (torch.as_tensor(x).float() for x in (a, b))
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T
