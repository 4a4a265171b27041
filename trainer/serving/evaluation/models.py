"""Whatever ``--model`` names, as ``encode(texts) -> float32 [N, H]``: an llm2comp export, a
sentence-transformers directory, or a plain causal LM with a pooling baseline (mean, last, memory)."""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch

from data_prep.errors import UserError

POOLINGS = ("mean", "last", "memory")


def load_encoder(path: str, pooling: Optional[str] = None, batch_size: int = 32,
                 instruction: Optional[str] = None, progress: bool = True,
                 first_token: Optional[str] = None) -> Callable[[list[str]], np.ndarray]:
    """``progress``: a progress bar (stderr) for every call's batches; ``first_token``: for a plain causal LM
    (``model.first_token``'s values; None: what the tokenizer adds). An export knows its own."""
    from data_prep.hub import local_folder

    from ..encoder import CONFIG, Encoder

    path = local_folder(path, "--model")  # an export, sentence-transformers model or causal LM, or its Hub id
    if os.path.exists(os.path.join(path, CONFIG)):
        if first_token:
            raise UserError(f"--first-token: {path} is an llm2comp export, which keeps the first token it trained with")
        enc = Encoder.from_pretrained(path)
        return lambda texts: enc.encode(texts, batch_size=batch_size, instruction=instruction, show_progress_bar=progress)
    if instruction:
        raise UserError(f"--instruction: {path} is not an llm2comp export, which alone knows its instruction template")
    if first_token and (os.path.exists(os.path.join(path, "modules.json"))
                        or not os.path.exists(os.path.join(path, "config.json"))):
        raise UserError(f"--first-token: {path} is not a plain causal LM (an encoder keeps the first token it trained with)")
    if os.path.exists(os.path.join(path, "modules.json")):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cuda" if torch.cuda.is_available() else "cpu")
        return lambda texts: st.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                       show_progress_bar=progress).astype(np.float32)
    if os.path.exists(os.path.join(path, "config.json")):
        if pooling not in POOLINGS:
            raise UserError(f"--model {path} is a plain causal LM: choose --pooling {'|'.join(POOLINGS)}")
        return PooledLM(path, pooling, first_token=first_token).encoder(batch_size, progress)
    raise UserError(f"--model {path}: neither an llm2comp export, a sentence-transformers folder nor a HF model")


class PooledLM:
    """Baselines on an untrained causal LM: mean or last-token pooling (causal, as the LM was trained), or
    the LLM2Comp encoding with K fresh memory tokens (bidirectional) before any training."""

    def __init__(self, path: str, pooling: str, k: int = 8, first_token: Optional[str] = None, dtype=None,
                 max_length: int = 512, compile: bool = False):
        """``dtype``: auto (bf16 on a GPU, fp32 on a CPU), float32 or bfloat16; ``max_length``: tokens of a text
        read (longer texts are cut); ``compile``: ``torch.compile`` each decoder block."""
        self.max_length = max_length
        from data_prep.tokenizer import load_tokenizer, tokenizer_identity
        from transformers import AutoModelForCausalLM

        from ...modeling.memory import initial_memory
        from ..encoder import resolve_dtype

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = resolve_dtype(dtype, self.device)
        from ...modeling.attention import resolve_attention
        from ...modeling.loading import from_pretrained, load_config

        attention = resolve_attention("auto", load_config(path))
        self.model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype, attn_implementation=attention).to(self.device).eval()
        self.tok = load_tokenizer(path)
        identity = tokenizer_identity(self.tok)
        from ...modeling.first_token import resolve_first_token

        prefix = resolve_first_token(self.tok, identity, first_token) if first_token else identity["prefix_ids"]
        self.prefix = torch.tensor(prefix, dtype=torch.long)
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)
        self.pooling = pooling
        emb = self.model.get_input_embeddings()
        self.memory = initial_memory(emb, emb.weight.shape[0], k) if pooling == "memory" else None
        if compile:
            from ...modeling.compile import compile_blocks

            compile_blocks(self.model.get_decoder())

    @property
    def compiled_blocks(self) -> list[int]:
        from ...modeling.compile import compiled_blocks, decoder_blocks

        decoder = self.model.get_decoder()
        return [compiled_blocks(decoder), len(decoder_blocks(decoder))]

    @torch.no_grad()
    def embed(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from ...modeling.pooling import encode

        # mean / last: causal, as the LM was trained; memory: the LLM2Comp encoding (bidirectional).
        return encode(self.model.get_decoder(), self.model.get_input_embeddings(), self.memory, self.prefix, self.pad,
                      ids, lengths, self.pooling, bidirectional=self.pooling == "memory")

    def encoder(self, batch_size: int, progress: bool = False):
        from tqdm import tqdm

        from ...data.padding import pad_right

        def encode(texts: list[str]) -> np.ndarray:
            ids = [x[: self.max_length] or [self.pad] for x in self.tok(texts, add_special_tokens=False)["input_ids"]]
            order = np.argsort([-len(x) for x in ids], kind="stable")
            out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
            for s in tqdm(range(0, len(order), batch_size), disable=not progress, unit="batch"):
                rows = order[s : s + batch_size]
                batch, lengths = pad_right([ids[i] for i in rows], self.pad)
                out[rows] = self.embed(batch.to(self.device), lengths.to(self.device)).float().cpu().numpy()
            return out

        return encode
