"""The LLM2Comp model: encoder E (LoRA on, bidirectional) and decoder/teacher D (LoRA off, causal) on one
copy of the base weights, plus K memory tokens (DESIGN.md §1).

Inputs are right-padded token ids with their lengths; the model adds the tokenizer's prefix (BOS, when
the tokenizer adds one) itself, so shards stay free of special tokens.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .adapters import AdapterSwitch
from .attention import run_decoder
from .memory import MemoryTokens, encode_memory
from .pooling import encode, text_states, with_prefix


def _positions(n: int, device) -> torch.Tensor:
    return torch.arange(n, device=device)[None, :]


class Compressor(nn.Module):
    def __init__(self, peft_model: nn.Module, memory_init: Optional[torch.Tensor], prefix_ids: list[int], pad_id: int,
                 pooling: str = "memory", embedding_delta: bool = False):
        super().__init__()
        self.model = peft_model
        # No memory tokens when the embedding does not use them (mean / last pooling).
        self.memory = MemoryTokens(memory_init) if memory_init is not None else None
        self.embedding_delta = None  # E's trainable input-embedding delta (model.train_input_embeddings)
        if embedding_delta:
            from .embedding_delta import EmbeddingDelta

            table = self.model.get_base_model().get_input_embeddings().weight
            self.embedding_delta = EmbeddingDelta(table.shape[0], table.shape[1], table.dtype, table.device)
        self.pooling = pooling
        self.packing: Optional[int] = None  # tokens per packed row (``data.packing``); None: padded batches
        self.register_buffer("prefix_ids", torch.tensor(prefix_ids, dtype=torch.long), persistent=False)
        self.pad_id = pad_id
        self.loss_chunk = 1024  # tokens per LM-head chunk in the vocabulary losses
        self.switch = AdapterSwitch(peft_model)
        cfg = self.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    # -- parts of the base model -------------------------------------------------------------------
    @property
    def config(self):
        return self.model.get_base_model().config

    @property
    def decoder(self) -> nn.Module:
        return self.model.get_base_model().get_decoder()

    @property
    def k(self) -> int:
        return self.memory.k if self.memory is not None else 0

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """D's input embeddings (the frozen base table)."""
        return self.model.get_base_model().get_input_embeddings()(ids)

    def encoder_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """E's input embeddings: the base table plus E's delta, when it trains one."""
        out = self.embed(ids)
        return out if self.embedding_delta is None else out + self.embedding_delta(ids).to(out.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states [N, H] (with the model's final soft-capping, if any)."""
        z = self.model.get_base_model().get_output_embeddings()(hidden)
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    # -- E: text -> memory states, text states, embeddings -----------------------------------------
    def memory_states(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final hidden states at the K memory positions of E on [prefix, text, m_1..m_K]: [B, K, H]."""
        with self.switch(True):
            return encode_memory(self.decoder, self.encoder_embed, self.memory.weight, self.prefix_ids, self.pad_id, ids, lengths,
                                 self.packing)

    def text_states(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final hidden states of E on [prefix, text] (no memory tokens): [B, P + T, H]."""
        with self.switch(True):
            return text_states(self.decoder, self.encoder_embed, self.prefix_ids, ids, lengths, packing=self.packing)

    def embed_texts(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The text embedding under the model's pooling, [B, H]."""
        with self.switch(True):
            memory = self.memory.weight if self.memory is not None else None
            return encode(self.decoder, self.encoder_embed, memory, self.prefix_ids, self.pad_id, ids, lengths, self.pooling,
                          packing=self.packing)

    # -- D: memory states -> predictions of targets ------------------------------------------------
    def decoder_hidden(self, memory: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """D (causal, LoRA off) on [prefix, h_1..h_K, targets]; hidden states at the positions that
        predict each target token (h_K predicts the first), packed sample by sample: [N, H].

        ``memory`` may hold no slots ([B, 0, H]): D on [prefix, targets], the no-memory baseline of the
        diagnostics (then the prefix predicts the first target; without a prefix nothing does, and the
        returned states predict targets 2..L)."""
        b, k = memory.shape[0], memory.shape[1]
        p = self.prefix_ids.numel()
        target_embeds = self.embed(targets)
        parts = [self.embed(self.prefix_ids.to(targets.device).expand(b, p))] if p else []
        embeds = torch.cat([*parts, memory.to(target_embeds.dtype), target_embeds], 1)
        pos = _positions(embeds.shape[1], targets.device)
        start = p + k - 1
        mask = (pos < (p + k + target_lengths)[:, None]).long()
        with self.switch(False):
            hidden = run_decoder(self.decoder, bidirectional=False, inputs_embeds=embeds, attention_mask=mask,
                                 packing=self.packing)
        select = (pos >= max(start, 0)) & (pos < start + target_lengths[:, None])
        return hidden[select]

    @torch.no_grad()
    def teacher_hidden(self, context: torch.Tensor, context_lengths: torch.Tensor,
                       targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
        """D on the full text [prefix, context, targets]: hidden states predicting each target token, [N, H]."""
        full = torch.cat([context, targets], 1)
        # Move each row's targets right after its context (rows are right-padded).
        idx = _positions(full.shape[1], full.device).expand(full.shape[0], -1)
        from_ctx = idx < context_lengths[:, None]
        src = torch.where(from_ctx, idx, idx - context_lengths[:, None] + context.shape[1])
        src = src.clamp(max=full.shape[1] - 1)
        joined = torch.gather(full, 1, src)
        ids, lengths = with_prefix(joined, context_lengths + target_lengths, self.prefix_ids)
        pos = _positions(ids.shape[1], ids.device)
        with self.switch(False):
            hidden = run_decoder(self.decoder, bidirectional=False, input_ids=ids, attention_mask=(pos < lengths[:, None]).long(),
                                 packing=self.packing)
        start = self.prefix_ids.numel() + context_lengths - 1
        select = (pos >= start[:, None]) & (pos < (start + target_lengths)[:, None])
        return hidden[select]

    def check_bidirectional(self) -> dict:
        """E (adapter on) bidirectional, D (adapter off) causal, through the calls training makes."""
        from .probe import check_bidirectional

        return check_bidirectional(self, self.decoder, self.config.get_text_config().vocab_size, self.switch)

    def forward(self, task: str, **batch) -> torch.Tensor:
        """The entry DeepSpeed calls (so ZeRO-3 gathers parameters); ``task`` picks the computation."""
        if task == "embed":
            return self.embed_texts(batch["ids"], batch["lengths"])
        if task == "mntp":
            from ..objectives.mntp import mntp_loss

            return mntp_loss(self, **batch)
        if task == "diagnose":  # stage 1's held-out compression diagnostics (no grad; sums to all-reduce)
            from ..objectives.diagnostics import diagnose

            return diagnose(self, batch)
        if task == "diagnose_mntp":
            from ..objectives.diagnostics import diagnose_mntp

            return diagnose_mntp(self, batch, batch.pop("ratio"), batch.pop("mask_id"), batch.pop("mode"))
        from ..objectives.compression import compression_loss

        return compression_loss(self, task, batch)


def build_compressor(base: nn.Module, k: int, prefix_ids: list[int], pad_id: Optional[int], lora, seed: int = 0,
                     memory_init: Optional[torch.Tensor] = None, pooling: str = "memory", init_mode: str = "sampled",
                     embedding_delta: bool = False) -> Compressor:
    """``k`` memory tokens for ``memory`` pooling (from ``memory_init`` when given, else drawn as
    ``init_mode`` says); none otherwise. ``embedding_delta``: E gets a trainable input-embedding delta."""
    from .adapters import attach_lora
    from .memory import initial_memory

    if pooling == "memory":
        if k <= 0:
            from data_prep.errors import UserError

            raise UserError(f"model.memory_tokens must be positive, got {k}")
        if memory_init is None:
            memory_init = initial_memory(base.get_input_embeddings(), base.config.get_text_config().vocab_size, k, seed,
                                         init_mode)
        memory_init = memory_init.to(base.get_input_embeddings().weight.dtype)
    else:
        memory_init = None
    for p in base.parameters():
        p.requires_grad_(False)
    peft_model = attach_lora(base, lora)
    return Compressor(peft_model, memory_init, prefix_ids, pad_id if pad_id is not None else 0, pooling,
                      embedding_delta)
