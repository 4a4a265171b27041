"""One-device training-step throughput (tokens/s, samples/s, step time, peak memory, MFU) of each stage.

Model: random weights from the architecture's config (no hub access, ``ARCHS`` below), built by the project's
``load_causal_lm(random_init=True)`` and ``build_compressor`` (K=8 memory tokens, LoRA r=16, alpha=32,
dropout 0.05 on q,v,o,gate,up,down, as in the recipes).

Stages (``--stage``):

* ``pretrain``: the project's path, literally: ``PretrainTask.loss`` / ``PretrainTask.update`` (Compressor
  forward -> ``compression_loss`` with ``--objective`` kl|nll|rc -> backward -> optimizer step).
* ``ucl`` / ``scl``: ``ContrastTask.loss`` / ``ContrastTask.update``: gradient caching in ``--chunk`` rows
  (``trainer/engine/gradcache.py``), row-seeded dropout, InfoNCE; attention dropout 0.2 for ucl, 0 for scl.
* ``encode``: the encoder forward without grad (``Compressor.embed_texts``), texts/s over a length mix,
  length-sorted batches (longest first, as ``trainer/encoder.py:Encoder.encode`` does) against the same texts
  in arbitrary order, each batch padded to its longest text.

The stage methods talk to a DeepSpeed-like engine; here ``PlainEngine`` is that engine on plain torch (AdamW
over the trainable parameters, clipping at 2.0, one optimizer step per batch however many micro-steps
gradient caching makes of it). ``--deepspeed`` runs the real DeepSpeed engine (ZeRO-2, one rank) instead
when deepspeed is installed. Weights are in ``--dtype`` (bf16 on CUDA, as ``model.dtype: bfloat16``;
fp32 on CPU); LoRA weights are fp32 (peft's default) and the plain path keeps no fp32 master copy.

``--baseline``: THE REFERENCE CODE'S APPROACH, REIMPLEMENTED HERE for comparison (it is not the project's
path; our reading of DESIGN.md §1 "deliberate differences"): two full model copies -- a trainable encoder
copy with LoRA whose vocabulary is resized by K memory tokens (the whole input-embedding matrix trains,
so the new rows can learn) and a separate frozen decoder/teacher copy --, eager attention, every sequence
right-padded to ``--seq`` (memory tokens right after the text), full [batch x length x vocab] logits from
the HF heads and the loss in a per-sample Python loop over fp32 full-vocabulary softmaxes. Contrastive
stages: the encoder copy only, all rows padded to ``--seq`` in one pass with a graph (no caching).
Encode: the encoder copy, eager, padded to ``--seq``, arbitrary order. With ``--baseline`` both run in
this process on the same batches, baseline first (then freed), and the ratios are printed.

Timing: ``--warmup`` steps, then ``--steps`` timed steps, each on its own synthetic batch (fixed seed,
identical for every mode). CUDA: ``torch.cuda.Event`` around each step, synchronised; CPU: perf_counter,
one torch thread unless ``--threads`` says otherwise (steadier on a shared machine).
Rates (tokens/s, samples/s, TFLOP/s, MFU) are medians of the per-step rates; step time is reported as
median, p10 and p90. tokens = real (non-pad) tokens of the texts processed: context + continuation
(pretrain), every encoded row (ucl counts both views, as the trainer's tokens_per_s does), texts (encode).
Peak memory: CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats`` before the model is built
(weights, optimizer state and activations); CPU: peak RSS delta over the same span (``ru_maxrss`` when it
rose, else a 5 ms psutil sampler), which is rough and labelled as such.

MFU = model FLOPs per step / step time / measured peak, where the peak is the best of several square
matmuls in ``--dtype`` on the same device in the same run (8192^3 on CUDA, 1024^3 on CPU; 2 n^3 FLOPs).
Model FLOPs are the useful matmul FLOPs of the batch's real tokens (see ``stack_flops`` and
``compression_flops``); padding, recomputation and the first no-grad pass of gradient caching are not
useful work and are not counted, so baseline and optimized have the same FLOPs for the same batch.

Run from the repository root:

    .venv/bin/python bench/train_step.py --stage pretrain --model-config tiny --device cpu --baseline
    .venv/bin/python bench/train_step.py --stage scl --model-config llama2-7b --micro-batch 64 --chunk 32
    .venv/bin/python bench/train_step.py --stage encode --model-config qwen2-1.5b --micro-batch 64

It prints a markdown table and writes ``bench/out/train_step-<stage>-<config>.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


# ---------------------------------------------------------------------------------------------------
# Model FLOPs
# ---------------------------------------------------------------------------------------------------
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


def linear_params_per_layer(d: Dims) -> int:
    """P = q + k + v + o + gate + up + down weights of one layer:
    H*(n_h*d_h) + 2*H*(n_kv*d_h) + (n_h*d_h)*H + 3*H*I."""
    a, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return d.hidden * a + 2 * d.hidden * kv + a * d.hidden + 3 * d.hidden * d.intermediate


def attention_pairs(s: int, causal: bool) -> int:
    """(query, key) pairs of one head on s tokens: s^2 bidirectional, s(s+1)/2 causal."""
    return s * (s + 1) // 2 if causal else s * s


def stack_flops(d: Dims, s: int, causal: bool, backward: bool) -> int:
    """Matmul FLOPs of the decoder stack (no LM head) on one sequence of s real tokens.

    Forward, per layer: 2*P*s for the linear layers (P = ``linear_params_per_layer``) plus
    4*(n_h*d_h)*pairs(s) for attention scores (Q K^T) and values (A V).
    Backward (``backward=True`` adds it): the base weights are frozen (only LoRA trains), so the linear
    layers compute input gradients only, 1x their forward (no weight gradients; LoRA's own weight
    gradients are negligible and not counted); the attention core has two activation operands and
    computes both gradients, 2x its forward. Forward+backward = 2 * linear + 3 * attention.
    Recomputation by gradient checkpointing is not counted.
    """
    linear = 2 * linear_params_per_layer(d) * s
    attention = 4 * d.heads * d.head_dim * attention_pairs(s, causal)
    per_layer = 2 * linear + 3 * attention if backward else linear + attention
    return d.layers * per_layer


def head_flops(d: Dims, positions: int, backward: bool) -> int:
    """LM head (frozen): 2*H*V per position forward; x2 with the gradient to its input."""
    return 2 * d.hidden * d.vocab * positions * (2 if backward else 1)


def compression_flops(d: Dims, context: list[int], continuation: list[int], k: int, prefix: int,
                      objective: str = "kl") -> int:
    """Useful model FLOPs of one stage-1 step, summed over samples (c = context, L = continuation,
    p = prefix tokens, K = memory tokens; t = targets: L, or c for ``rc``):

      E  forward+backward, bidirectional, on p + c + K tokens          stack_flops(p+c+K, bi, bwd)
      D  forward+backward to its inputs, causal, on p + K + t tokens    stack_flops(p+K+t, causal, bwd)
         + LM head forward+backward on the t target positions           head_flops(t, bwd)
      kl only: teacher D forward, causal, on p + c + L tokens           stack_flops(p+c+L, causal)
         + LM head forward on the L target positions                    head_flops(L)
    """
    total = 0
    for c, cont in zip(context, continuation):
        t = c if objective == "rc" else cont
        total += stack_flops(d, prefix + c + k, causal=False, backward=True)
        total += stack_flops(d, prefix + k + t, causal=True, backward=True) + head_flops(d, t, backward=True)
        if objective == "kl":
            total += stack_flops(d, prefix + c + cont, causal=True, backward=False) + head_flops(d, cont, backward=False)
    return total


def contrast_flops(d: Dims, lengths: list[int], k: int, prefix: int) -> int:
    """One stage-2/3 step: E forward+backward, bidirectional, on p + s + K tokens per encoded row. The
    first, no-grad pass of gradient caching is recomputation-like overhead and is not counted; nor is
    the InfoNCE loss (a [rows x rows x H] product, negligible)."""
    return sum(stack_flops(d, prefix + s + k, causal=False, backward=True) for s in lengths)


def encode_flops(d: Dims, lengths: list[int], k: int, prefix: int) -> int:
    """Encoding: E forward, bidirectional, on p + s + K tokens per text."""
    return sum(stack_flops(d, prefix + s + k, causal=False, backward=False) for s in lengths)


# ---------------------------------------------------------------------------------------------------
# Synthetic data (fixed seed; the same batches for every mode)
# ---------------------------------------------------------------------------------------------------
def _token_rows(rng, lengths, vocab: int) -> list[list[int]]:
    return [rng.integers(3, vocab, int(n)).tolist() for n in lengths]  # ids 0..2: specials


def _lognormal_lengths(rng, n: int, median: float, sigma: float, lo: int, hi: int):
    import numpy as np

    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), lo, max(lo, hi)).astype(int)


def compression_batches(n_batches: int, micro_batch: int, seq: int, vocab: int, seed: int = SEED) -> list[dict]:
    """Wikipedia-like windows: document lengths lognormal (median 400 tokens), cut into balanced windows of
    at most ``seq`` tokens (``data_prep.windows.window_bounds``), split uniformly with >= 10 tokens each
    side (DESIGN.md §3); batched by the trainer's length-grouped sampler, as ``CompressionBatches`` does."""
    import numpy as np

    from data_prep.windows import window_bounds
    from trainer.data.compression import pad_right
    from trainer.data.sampler import LengthGroupedBatchSampler

    rng = np.random.default_rng(seed)
    n, windows = n_batches * micro_batch, []
    while len(windows) < n:
        doc = int(_lognormal_lengths(rng, 1, 400, 1.0, 20, 20000)[0])
        windows += [e - s for s, e in window_bounds(doc, seq) if e - s >= 20]
    windows = rng.permutation(windows)[:n]
    split = [int(rng.integers(10, w - 10 + 1)) for w in windows]
    ctx = _token_rows(rng, split, vocab)
    cont = _token_rows(rng, [w - c for w, c in zip(windows, split)], vocab)
    sampler = LengthGroupedBatchSampler(windows, micro_batch, 1, 0, seed, group_by_length=True)
    out = []
    for _, idx in zip(range(n_batches), sampler):
        c, cl = pad_right([ctx[i] for i in idx], 0)
        y, yl = pad_right([cont[i] for i in idx], 0)
        out.append({"context": c, "context_len": cl, "continuation": y, "continuation_len": yl})
    return out


def sentence_lengths(rng, n: int, seq: int):
    """Sentences of 8-64 tokens, lognormal around 24."""
    return _lognormal_lengths(rng, n, 24, 0.5, 8, min(64, seq))


def contrast_batches(stage: str, n_batches: int, micro_batch: int, seq: int, vocab: int, negatives: int,
                     seed: int = SEED) -> list[dict]:
    """Batches shaped as ``SentenceBatches`` (ucl) / ``PairBatches`` (scl) yield them: random order."""
    import numpy as np

    from trainer.data.compression import pad_right

    rng = np.random.default_rng(seed)

    def rows(n: int):
        return pad_right(_token_rows(rng, sentence_lengths(rng, n, seq), vocab), 0)

    out = []
    for _ in range(n_batches):
        if stage == "ucl":
            ids, lengths = rows(micro_batch)
            out.append({"ids": ids, "lengths": lengths})
        else:
            (q, ql), (p, pl), (ng, nl) = rows(micro_batch), rows(micro_batch), rows(micro_batch * negatives)
            out.append({"query": q, "query_len": ql, "positive": p, "positive_len": pl,
                        "negative": ng, "negative_len": nl})
    return out


def encode_texts(n: int, seq: int, vocab: int, seed: int = SEED) -> list[list[int]]:
    """Texts of 8-512 tokens (capped at ``seq``), lognormal around 64: queries to passages."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return _token_rows(rng, _lognormal_lengths(rng, n, 64, 0.9, 8, min(512, seq)), vocab)


def batch_tokens(stage: str, batch: dict) -> int:
    """Real tokens of one batch, as the stages report them (LossOutput.tokens)."""
    if stage == "pretrain":
        return int(batch["context_len"].sum() + batch["continuation_len"].sum())
    if stage == "ucl":
        return 2 * int(batch["lengths"].sum())
    return int(batch["query_len"].sum() + batch["positive_len"].sum() + batch["negative_len"].sum())


def batch_flops(stage: str, batch: dict, d: Dims, prefix: int, objective: str) -> int:
    if stage == "pretrain":
        return compression_flops(d, batch["context_len"].tolist(), batch["continuation_len"].tolist(),
                                 MEMORY_TOKENS, prefix, objective)
    if stage == "ucl":
        return contrast_flops(d, 2 * batch["lengths"].tolist(), MEMORY_TOKENS, prefix)
    rows = batch["query_len"].tolist() + batch["positive_len"].tolist() + batch["negative_len"].tolist()
    return contrast_flops(d, rows, MEMORY_TOKENS, prefix)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------
def build_base(name: str, dtype: str, attention: str, device):
    """A random-weight causal LM of architecture ``name``, through the project's loader (offline: the
    config is written to a temporary folder). Built under ``torch.device(device)`` so a 7B model is
    initialised on the GPU, not on the host."""
    import torch
    import transformers

    from trainer.modeling.loading import load_causal_lm

    cls, fields, _ = ARCHS[name]
    with tempfile.TemporaryDirectory() as tmp, torch.device(device):
        getattr(transformers, cls)(**fields).save_pretrained(tmp)
        model, _ = load_causal_lm(tmp, dtype, attention, random_init=True, seed=SEED)
    return model


def lora_settings():
    from trainer.modeling.adapters import LoraSettings

    return LoraSettings(r=16, alpha=32, dropout=0.05)


def build_project_model(a, stage: str):
    """The project's Compressor, set up as PretrainTask/ContrastTask.build_model set it up."""
    from trainer.modeling.adapters import enable_gradient_checkpointing
    from trainer.modeling.compressor import build_compressor
    from trainer.modeling.dropout import enable_row_seeded_dropout, set_attention_dropout

    base = build_base(a.model_config, a.dtype, a.attention, a.device)
    # Not under torch.device(...): initial_memory draws from a CPU generator.
    model = build_compressor(base, MEMORY_TOKENS, ARCHS[a.model_config][2], 0, lora_settings(), SEED)
    model.loss_chunk = a.loss_chunk
    if stage in ("ucl", "scl"):  # as ContrastTask: row-seeded LoRA and attention dropout keep caching exact
        enable_row_seeded_dropout(model, a.attention_dropout)
    else:
        set_attention_dropout(model.model, 0.0)
    if a.gradient_checkpointing and stage != "encode":
        enable_gradient_checkpointing(model.model, model.switch)
    return model.to(a.device).train(stage != "encode")


class PlainEngine:
    """The part of DeepSpeed's engine the stages call -- ``engine(task, **batch)``, ``backward``, ``step``,
    ``micro_steps``, ``global_steps`` -- on plain torch: AdamW over the trainable parameters, gradient
    clipping, one optimizer step every ``micro_steps_per_batch`` calls of step() (gradient caching)."""

    def __init__(self, module, micro_steps_per_batch: int = 1, lr: float = 1e-4, clip: float = 2.0):
        import torch

        self.module, self.gas, self.clip = module, micro_steps_per_batch, clip
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-5)
        self.micro_steps = self.global_steps = 0

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss, scale_wrt_gas: bool = True):
        (loss / self.gas if scale_wrt_gas else loss).backward()

    def step(self):
        import torch

        self.micro_steps += 1
        if self.micro_steps % self.gas == 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.global_steps += 1


def deepspeed_engine(model, a, micro_steps_per_batch: int):
    """The real DeepSpeed engine (one rank, ``--ds-config``), as ``trainer/engine/loop.py`` builds it."""
    import torch

    from trainer.engine.deepspeed_setup import initialize
    from trainer.engine.dist import init_distributed, world_from_env
    from trainer.engine.settings import OptimSettings, TrainSettings

    if not torch.distributed.is_initialized():
        init_distributed(world_from_env())
    train = TrainSettings(micro_batch=a.micro_batch, precision="bf16" if a.dtype == "bfloat16" else "fp32",
                          deepspeed=a.ds_config, max_steps=a.warmup + a.steps)
    engine, *_ = initialize(model, train, OptimSettings(), micro_steps_per_batch)
    return engine


def project_step(a, stage: str, model) -> tuple[Callable[[dict], float], object]:
    """One training step of the project's own path: the stage's ``loss`` then ``update``."""
    from trainer.engine.dist import World
    from trainer.engine.settings import TrainSettings

    train = TrainSettings(micro_batch=a.micro_batch, seed=SEED)
    if stage == "pretrain":
        from trainer.stages.pretrain import ObjectiveSettings, PretrainRecipe, PretrainTask

        task = PretrainTask(PretrainRecipe(objective=ObjectiveSettings(a.objective, a.loss_chunk), train=train))
    else:
        from trainer.stages.contrast import ContrastRecipe, ContrastSettings, ContrastTask

        settings = ContrastSettings(kind=stage, chunk=a.chunk, negatives=a.negatives,
                                    attention_dropout=a.attention_dropout)
        task = ContrastTask(ContrastRecipe(contrast=settings, train=train))
        task.world, task.pad_id = World(0, 1, 0), model.pad_id  # what ContrastTask.build_model/build_data set
    gas = task.micro_steps_per_batch
    engine = deepspeed_engine(model, a, gas) if a.deepspeed else PlainEngine(model, gas)

    def step(batch: dict) -> float:
        out = task.loss(engine, batch)
        task.update(engine, out)
        return float(out.loss.detach())

    return step, engine


# ---------------------------------------------------------------------------------------------------
# The reference code's approach (--baseline), reimplemented for comparison
# ---------------------------------------------------------------------------------------------------
def _right_join(a, a_len, b, b_len, width: int, pad: int):
    """Token rows [a_i[:a_len_i], b_i[:b_len_i]] right-padded to ``width``, and their attention mask."""
    import torch

    full = torch.cat([a, b], 1)
    idx = torch.arange(width, device=a.device)[None, :].expand(a.shape[0], -1)
    src = torch.where(idx < a_len[:, None], idx, idx - a_len[:, None] + a.shape[1])
    valid = idx < (a_len + b_len)[:, None]
    return torch.where(valid, torch.gather(full, 1, src.clamp(max=full.shape[1] - 1)), pad), valid


class ReferenceBaseline:
    """Two full model copies (encoder with LoRA on a vocabulary resized by K memory tokens; frozen
    decoder/teacher), eager attention, padding to ``seq``, full logits, per-sample fp32 loss loop."""

    def __init__(self, a, stage: str):
        import torch

        from trainer.modeling.adapters import attach_lora

        self.a, self.stage, self.seq = a, stage, a.seq
        self.prefix = torch.tensor(ARCHS[a.model_config][2], dtype=torch.long, device=a.device)
        enc = build_base(a.model_config, a.dtype, "eager", a.device)
        vocab = enc.get_input_embeddings().weight.shape[0]
        enc.resize_token_embeddings(vocab + MEMORY_TOKENS, mean_resizing=False)
        with torch.no_grad():  # new rows at the mean embedding, as a mean-initialised resize places them
            w = enc.get_input_embeddings().weight
            w[vocab:] = w[:vocab].float().mean(0).to(w.dtype)
        for p in enc.parameters():
            p.requires_grad_(False)
        if stage in ("ucl", "scl"):
            enc.config.attention_dropout = a.attention_dropout  # plain torch dropout in eager attention
        self.encoder = attach_lora(enc, lora_settings())
        self.encoder.get_base_model().get_input_embeddings().weight.requires_grad_(stage != "encode")
        self.memory_ids = torch.arange(vocab, vocab + MEMORY_TOKENS, device=a.device)
        self.decoder = None
        if stage == "pretrain":
            self.decoder = build_base(a.model_config, a.dtype, "eager", a.device).requires_grad_(False)
        if a.gradient_checkpointing and stage != "encode":
            for m in (self.encoder, self.decoder):
                if m is not None:
                    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.train(stage != "encode")

    def train(self, mode: bool):
        for m in (self.encoder, self.decoder):
            if m is not None:
                m.train(mode)

    def modules(self):
        return [m for m in (self.encoder, self.decoder) if m is not None]

    def _with_prefix(self, ids, lengths):
        import torch

        p = self.prefix.expand(ids.shape[0], -1)
        return torch.cat([p, ids], 1), lengths + p.shape[1]

    def memory_states(self, ids, lengths):
        """[prefix, text, m_1..m_K] padded to p + seq + K; bidirectional encoder copy; [B, K, H]."""
        import torch

        from trainer.modeling.attention import run_decoder

        ids, lengths = self._with_prefix(ids, lengths)
        mem = self.memory_ids.expand(ids.shape[0], -1)
        mem_len = torch.full_like(lengths, MEMORY_TOKENS)
        width = self.prefix.numel() + self.seq + MEMORY_TOKENS
        joined, mask = _right_join(ids, lengths, mem, mem_len, width, 0)
        hidden = run_decoder(self.encoder.get_base_model().get_decoder(), bidirectional=True,
                             input_ids=joined, attention_mask=mask.long())
        pos = torch.arange(width, device=ids.device)[None, :]
        is_memory = (pos >= lengths[:, None]) & (pos < (lengths + MEMORY_TOKENS)[:, None])
        return hidden[is_memory].view(ids.shape[0], MEMORY_TOKENS, -1)

    def embed_texts(self, ids, lengths):
        return self.memory_states(ids, lengths).mean(1)

    def compression_loss(self, batch: dict, objective: str):
        import torch
        import torch.nn.functional as F

        ctx, cl, cont, yl = batch["context"], batch["context_len"], batch["continuation"], batch["continuation_len"]
        memory = self.memory_states(ctx, cl)
        targets, tl = (ctx, cl) if objective == "rc" else (cont, yl)
        p, k, b = self.prefix.numel(), MEMORY_TOKENS, ctx.shape[0]
        embed = self.decoder.get_input_embeddings()
        # Decoder copy on [prefix, h_1..h_K, targets padded to seq]; full logits, as the HF head returns them.
        head = torch.cat([embed(self.prefix.expand(b, -1)), memory.to(embed.weight.dtype)], 1)
        y = F.pad(targets, (0, self.seq - targets.shape[1]))
        embeds = torch.cat([head, embed(y)], 1)
        pos = torch.arange(embeds.shape[1], device=ctx.device)[None, :]
        student = self.decoder(inputs_embeds=embeds, attention_mask=(pos < (p + k + tl)[:, None]).long(),
                               use_cache=False).logits  # [B, p+K+seq, V]
        teacher = None
        if objective == "kl":
            with torch.no_grad():
                ids, lengths = self._with_prefix(ctx, cl)
                full, mask = _right_join(ids, lengths, cont, yl, p + self.seq, 0)
                teacher = self.decoder(input_ids=full, attention_mask=mask.long(), use_cache=False).logits
        loss = 0.0
        for i in range(b):  # the reference's per-sample loop, fp32 over the full vocabulary
            n, s0 = int(tl[i]), p + k - 1
            log_ps = F.log_softmax(student[i, s0:s0 + n].float(), -1)
            if teacher is None:
                loss = loss + F.nll_loss(log_ps, targets[i, :n])
            else:
                t0 = p + int(cl[i]) - 1
                log_pt = F.log_softmax(teacher[i, t0:t0 + n].float(), -1)
                loss = loss + (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        return loss / b


def baseline_step(a, stage: str, base: ReferenceBaseline) -> tuple[Callable[[dict], float], object]:
    """One training step of the reference approach: one pass with a graph, backward, optimizer step."""
    import torch

    from trainer.objectives.contrastive import supervised_loss, unsupervised_loss

    engine = PlainEngine(torch.nn.ModuleList(base.modules()))
    temperature = 0.05

    def step(batch: dict) -> float:
        if stage == "pretrain":
            loss = base.compression_loss(batch, a.objective)
        elif stage == "ucl":
            ids, lengths = batch["ids"], batch["lengths"]
            z = base.embed_texts(torch.cat([ids, ids]), torch.cat([lengths, lengths]))
            b = ids.shape[0]
            loss = unsupervised_loss({"view1": z[:b], "view2": z[b:]}, temperature)
        else:
            parts = [batch["query"], batch["positive"], batch["negative"]]
            width = max(x.shape[1] for x in parts)
            ids = torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in parts])
            lengths = torch.cat([batch["query_len"], batch["positive_len"], batch["negative_len"]])
            z = base.embed_texts(ids, lengths)
            b = batch["query"].shape[0]
            loss = supervised_loss({"query": z[:b], "positive": z[b:2 * b], "negative": z[2 * b:]}, temperature)
        engine.backward(loss)
        engine.step()
        return float(loss.detach())

    return step, engine


# ---------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    """fn() and its seconds: CUDA events (synchronised) on a GPU, perf_counter on the CPU."""
    import torch

    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def matmul_peak(device: str, dtype: str) -> dict:
    """The device's achievable matmul rate in ``dtype``: best of several n x n @ n x n products."""
    import torch

    n, trials = (8192, 20) if device.startswith("cuda") else (1024, 5)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n, n, generator=g).to(device, getattr(torch, dtype))
    y, out = torch.randn(n, n, generator=g).to(device, getattr(torch, dtype)), torch.empty_like(x)
    for _ in range(3 if trials == 5 else 10):  # clocks up, kernels chosen
        torch.matmul(x, y, out=out)
    best = min(timed(lambda: torch.matmul(x, y, out=out), device)[1] for _ in range(trials))
    del x, y, out
    return {"n": n, "dtype": dtype, "best_s": best, "tflops": 2 * n**3 / best / 1e12}


class MemoryMeter:
    """Peak memory since ``start`` (taken before a mode builds its model), read after each ``reset``.

    CUDA: ``max_memory_allocated`` (absolute: weights, optimizer state, activations). CPU: peak RSS minus
    the RSS at ``start``: ``ru_maxrss`` when the process set a new high-water mark since ``reset``, else the
    maximum of a 5 ms psutil sampler (a rough figure; allocators keep freed memory)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        else:
            import threading

            import psutil

            self.proc, self.stop = psutil.Process(), threading.Event()
            self.rss0 = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
        self.reset()
        if not self.cuda:
            self.thread.start()

    def _sample(self):
        while not self.stop.is_set():
            self.sampled = max(self.sampled, self.proc.memory_info().rss)
            time.sleep(0.005)

    @staticmethod
    def _maxrss() -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    def reset(self):
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.maxrss0, self.sampled = self._maxrss(), self.proc.memory_info().rss

    def peak(self) -> tuple[float, str]:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / MIB, "cuda max_memory_allocated"
        maxrss = self._maxrss()
        if maxrss > self.maxrss0:
            return (maxrss - self.rss0) / MIB, "cpu peak RSS delta (ru_maxrss)"
        return (max(self.sampled, self.proc.memory_info().rss) - self.rss0) / MIB, "cpu peak RSS delta (5 ms sampler)"

    def close(self):
        if not self.cuda:
            self.stop.set()
            self.thread.join()


def _free(device: str):
    """Release what the last mode held, so that the next one starts from a clean slate."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed heap pages: hand them back
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times: list[float], tokens: list[int], samples: list[int], flops: list[int], peak_tflops: float,
              per: float = 1.0) -> dict:
    """Medians of the per-step rates; step time as median/p10/p90 (``per``: steps a timed unit holds)."""
    med = lambda xs: statistics.median(xs)
    achieved = med([f / t for f, t in zip(flops, times)]) / 1e12
    return {
        "tokens_per_s": med([n / t for n, t in zip(tokens, times)]),
        "samples_per_s": med([n / t for n, t in zip(samples, times)]),
        "step_ms_median": med(times) / per * 1e3,
        "step_ms_p10": _quantile(times, 0.1) / per * 1e3,
        "step_ms_p90": _quantile(times, 0.9) / per * 1e3,
        "model_tflop_per_step": statistics.mean(flops) / per / 1e12,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "mfu": achieved / peak_tflops,
        "tokens_per_s_overall": sum(tokens) / sum(times),  # totals, for reference
    }


def _is_oom(e: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", MemoryError))
    return isinstance(e, oom) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------------------------------
# Running the modes
# ---------------------------------------------------------------------------------------------------
MODE_LABELS = {"project": "optimized (project)", "baseline": "baseline (reference, reimplemented)"}


def run_training(a, mode: str, batches: list[dict], d: Dims, peak: dict) -> dict:
    """Build ``mode``'s model, run warm-up + timed steps on ``batches``, free the model; one result row."""
    prefix = len(ARCHS[a.model_config][2])
    row = {"stage": a.stage, "mode": mode, "label": MODE_LABELS[mode], "micro_batch": a.micro_batch, "seq": a.seq}
    meter, model, step = MemoryMeter(a.device), None, None
    times, losses, warmup_losses = [], [], []
    try:
        if mode == "baseline":
            model = ReferenceBaseline(a, a.stage)
            step, _ = baseline_step(a, a.stage, model)
        else:
            model = build_project_model(a, a.stage)
            step, _ = project_step(a, a.stage, model)
        for i, batch in enumerate(batches):
            loss, secs = timed(lambda: step(batch), a.device)
            if i >= a.warmup:
                times.append(secs)
                losses.append(loss)
            else:
                warmup_losses.append(loss)
        row["status"] = "ok"
    except Exception as e:  # an out-of-memory is a result (the approach does not fit), anything else is not
        if not _is_oom(e):
            raise
        row["status"] = "out of memory"
    finally:
        row["peak_mib"], row["peak_measured_by"] = meter.peak()
        meter.close()
        del model, step
        _free(a.device)
    timed_batches = batches[a.warmup:]
    tokens = [batch_tokens(a.stage, b) for b in timed_batches]
    flops = [batch_flops(a.stage, b, d, prefix, a.objective) for b in timed_batches]
    row.update(per_step={"seconds": times, "tokens": tokens, "flops": flops, "loss": losses},
               warmup_losses=warmup_losses)
    if row["status"] == "ok":
        row.update(summarize(times, tokens, [a.micro_batch] * len(times), flops, peak["tflops"]))
        row["nonfinite_losses"] = sum(not math.isfinite(x) for x in losses)
    return row


def encode_pass(embed, texts: list[list[int]], order, batch_size: int, device: str, limit: Optional[int] = None):
    """Encode ``texts`` in ``order``, ``batch_size`` at a time, each batch padded to its longest text."""
    import torch

    from trainer.data.compression import pad_right

    starts = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in list(starts)[:limit]:
            ids, lengths = pad_right([texts[i] for i in order[start:start + batch_size]], 0)
            embed(ids.to(device), lengths.to(device))


def run_encode(a, mode: str, texts: list[list[int]], d: Dims, peak: dict) -> list[dict]:
    """Texts/s of the encoder forward; the project's model in sorted and arbitrary order, the baseline
    (padded to ``seq`` by construction) in arbitrary order."""
    import numpy as np

    prefix = len(ARCHS[a.model_config][2])
    lengths = [len(t) for t in texts]
    orders = {"arbitrary": np.arange(len(texts))}
    if mode == "project":  # longest first, as Encoder.encode orders them
        orders = {"sorted": np.argsort([-n for n in lengths], kind="stable"), **orders}
    n_batches = math.ceil(len(texts) / a.micro_batch)
    flops = encode_flops(d, lengths, MEMORY_TOKENS, prefix)
    meter = MemoryMeter(a.device)
    model = ReferenceBaseline(a, "encode") if mode == "baseline" else build_project_model(a, "encode")
    rows = []
    try:
        for name, order in orders.items():
            meter.reset()
            encode_pass(model.embed_texts, texts, order, a.micro_batch, a.device, limit=max(1, a.warmup))
            times = [timed(lambda: encode_pass(model.embed_texts, texts, order, a.micro_batch, a.device), a.device)[1]
                     for _ in range(a.repeats)]
            row = {"stage": "encode", "mode": f"{mode}-{name}", "status": "ok", "micro_batch": a.micro_batch,
                   "seq": a.seq, "label": f"{MODE_LABELS[mode]}, {name} order", "texts": len(texts),
                   "batches": n_batches, "per_pass": {"seconds": times}}
            row.update(summarize(times, [sum(lengths)] * len(times), [len(texts)] * len(times), [flops] * len(times),
                                 peak["tflops"], per=n_batches))
            row["texts_per_s"] = row["samples_per_s"]
            row["peak_mib"], row["peak_measured_by"] = meter.peak()
            rows.append(row)
    finally:
        meter.close()
        del model
        _free(a.device)
    return rows


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def rows_per_batch(a) -> int:
    """Texts encoded per ucl/scl batch (as ContrastTask counts them)."""
    return 2 * a.micro_batch if a.stage == "ucl" else a.micro_batch * (2 + a.negatives)


def print_table(rows: list[dict], a, info: dict, peak: dict) -> None:
    print(f"device: {info['device_name']}\ncommit: {info['commit']}   torch {info['torch']}   date: {info['date']}")
    print(f"model: {a.model_config} (random init), {a.dtype}, attention {a.attention}, K={MEMORY_TOKENS}, "
          f"LoRA r16/a32 on q,v,o,gate,up,down" + (f", objective {a.objective}" if a.stage == "pretrain" else "")
          + (f", chunks of {a.chunk} of {rows_per_batch(a)} rows per batch, attention dropout {a.attention_dropout}"
             if a.stage in ("ucl", "scl") else "")
          + (", gradient checkpointing" if a.gradient_checkpointing else "")
          + (", DeepSpeed engine" if a.deepspeed else ""))
    print(f"measured matmul peak: {peak['tflops']:.3g} TFLOP/s ({peak['n']}^3 {peak['dtype']}, best of several)\n")
    cols = ["device", "model", "stage", "mode", "micro-batch", "seq", "tokens/s", "samples/s", "step ms (median)",
            "p10/p90 ms", "peak MiB", "model TFLOP/step", "achieved TFLOP/s", "peak TFLOP/s", "MFU %"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    dev = a.device + (f" ({info['device_name']})" if a.device.startswith("cuda") else "")
    for r in rows:
        ok = r["status"] == "ok"
        g = lambda key, spec: _fmt(r.get(key), spec) if ok else r["status"]
        print("| " + " | ".join([
            dev, a.model_config, r["stage"], r["label"], str(r["micro_batch"]), str(r["seq"]),
            g("tokens_per_s", ",.0f"), g("samples_per_s", ",.2f"), g("step_ms_median", ",.1f"),
            f"{r['step_ms_p10']:,.1f}/{r['step_ms_p90']:,.1f}" if ok else "-", _fmt(r.get("peak_mib"), ",.0f"),
            g("model_tflop_per_step", ".3g"), g("achieved_tflops", ".3g"), _fmt(peak["tflops"], ".3g"),
            _fmt(100 * r["mfu"], ".2f") if ok else "-",
        ]) + " |")
    how = ", ".join(dict.fromkeys(f"{r['mode']}: {r['peak_measured_by']}" for r in rows))
    print(f"\npeak memory ({how}); rates are medians of per-step rates")


def ratios(rows: list[dict]) -> dict:
    """optimized / baseline (and, for encode, sorted / arbitrary) where both ran."""
    by = {r["mode"]: r for r in rows if r["status"] == "ok"}
    out = {}
    pairs = [("project", "baseline"), ("project-sorted", "project-arbitrary"), ("project-sorted", "baseline-arbitrary")]
    for new, old in pairs:
        if new in by and old in by:
            out[f"{new}_vs_{old}"] = {"tokens_per_s": by[new]["tokens_per_s"] / by[old]["tokens_per_s"],
                                      "peak_memory": by[new]["peak_mib"] / by[old]["peak_mib"]
                                      if by[old]["peak_mib"] > 0 else None}
    return out


# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=["pretrain", "ucl", "scl", "encode"], required=True)
    p.add_argument("--model-config", choices=list(ARCHS), required=True)
    p.add_argument("--seq", type=int, help="max tokens per window / text; the baseline pads to it (512; CPU 128)")
    p.add_argument("--micro-batch", type=int, help="samples per step (encode: texts per batch); default per stage")
    p.add_argument("--steps", type=int, help="timed steps (20; CPU 5); encode: texts = steps x micro-batch")
    p.add_argument("--warmup", type=int, help="warm-up steps (3; CPU 1)")
    p.add_argument("--repeats", type=int, default=3, help="encode: timed passes over the texts per order")
    p.add_argument("--baseline", action="store_true", help="also run the reference approach (reimplemented)")
    p.add_argument("--device", help="cuda | cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--attention", default="sdpa", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    p.add_argument("--objective", default="kl", choices=["kl", "nll", "rc"], help="pretrain objective")
    p.add_argument("--loss-chunk", type=int, default=1024, help="tokens per LM-head chunk (objective.loss_chunk)")
    p.add_argument("--chunk", type=int, help="ucl/scl: rows per gradient-cache chunk (16 ucl, 32 scl; CPU 4)")
    p.add_argument("--negatives", type=int, default=1, help="scl: hard negatives per query")
    p.add_argument("--attention-dropout", type=float, help="ucl/scl (default: 0.2 ucl, 0.0 scl)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--deepspeed", action="store_true", help="optimized mode through the DeepSpeed engine")
    p.add_argument("--ds-config", default="ds_configs/zero2.json")
    p.add_argument("--threads", type=int, help="CPU: torch threads (default 1; 0: torch's default)")
    p.add_argument("--json", help="default: bench/out/train_step-<stage>-<config>.json")
    a = p.parse_args(argv)
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    kind = "cuda" if a.device.startswith("cuda") else "cpu"
    a.micro_batch = a.micro_batch or DEFAULT_MICRO_BATCH[kind][a.stage]
    for key, value in DEFAULT_STEPS[kind].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.chunk = a.chunk or DEFAULT_CHUNK[kind].get(a.stage, 0)
    if a.attention_dropout is None:
        a.attention_dropout = DEFAULT_ATTENTION_DROPOUT.get(a.stage, 0.0)
    if a.seq < 24 or a.steps < 1 or a.warmup < 0 or a.micro_batch < 1 or a.repeats < 1:
        p.error("need --seq >= 24, --steps >= 1, --warmup >= 0, --micro-batch >= 1, --repeats >= 1")
    if a.deepspeed and importlib.util.find_spec("deepspeed") is None:
        p.error("--deepspeed: deepspeed is not installed (the default plain-torch engine needs nothing more)")
    a.json = a.json or os.path.join(REPO, "bench", "out", f"train_step-{a.stage}-{a.model_config}.json")
    return a


def preload(name: str) -> None:
    """Import what building and running a model imports lazily, so that the first mode's CPU memory
    figure does not carry the libraries' own memory."""
    import importlib

    import peft  # noqa: F401
    import transformers

    import trainer.stages.contrast, trainer.stages.pretrain, trainer.modeling.compressor  # noqa: F401,E401

    model_type = getattr(transformers, ARCHS[name][0])().model_type
    importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def main(argv=None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, REPO)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations from peft
    from _env import env_info  # noqa: E402  (bench/ is on sys.path when run as a script)

    import torch

    if a.device == "cpu" and a.threads != 0:
        # OpenMP threads wait for each other at every op; on a shared machine one busy core makes each
        # small op wait for a time slice (the tiny model's ucl step: 4.2 s with 2 threads, 28 ms with 1).
        torch.set_num_threads(a.threads or 1)
    torch.manual_seed(SEED)
    info = env_info(a.device)
    peak = matmul_peak(a.device, a.dtype)
    d = dims_of(a.model_config)
    vocab = d.vocab
    preload(a.model_config)
    modes = (["baseline"] if a.baseline else []) + ["project"]  # baseline first, freed before the project's
    rows = []
    if a.stage == "encode":
        texts = encode_texts(a.steps * a.micro_batch, a.seq, vocab)
        for mode in modes:
            rows += run_encode(a, mode, texts, d, peak)
    else:
        n = a.warmup + a.steps
        batches = (compression_batches(n, a.micro_batch, a.seq, vocab) if a.stage == "pretrain"
                   else contrast_batches(a.stage, n, a.micro_batch, a.seq, vocab, a.negatives))
        batches = [{k: v.to(a.device) for k, v in b.items()} for b in batches]
        for mode in modes:
            rows.append(run_training(a, mode, batches, d, peak))
            print(f"  ran {mode}: {rows[-1]['status']}", file=sys.stderr)
    print_table(rows, a, info, peak)
    rat = ratios(rows)
    unit = "texts/s" if a.stage == "encode" else "tokens/s"  # the same texts in every encode mode
    for name, r in rat.items():
        mem = f", peak memory x{r['peak_memory']:.2f}" if r["peak_memory"] else ""
        print(f"ratio {name.replace('_vs_', ' / ')}: {unit} x{r['tokens_per_s']:.2f}{mem}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({**info, "device": a.device, "args": vars(a), "arch": {"name": a.model_config, **ARCHS[a.model_config][1]},
                   "memory_tokens": MEMORY_TOKENS, "prefix_tokens": len(ARCHS[a.model_config][2]),
                   "matmul_peak": peak, "rows": rows, "ratios": rat}, f, indent=2)
    print(f"wrote {a.json}")
    bad = [r for r in rows if r.get("nonfinite_losses")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
