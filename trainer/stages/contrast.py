"""Stages 2 and 3, contrastive training (DESIGN.md §1): ``llm2comp contrast --config RECIPE.yaml [key=value ...]``.

``ucl``: each sentence against itself under other dropout masks, in-batch negatives from every rank.
``scl``: each query (instruction applied at prep time) against every positive and hard negative of the
global batch. Both train through gradient caching (``trainer/engine/gradcache.py``) in chunks of
``contrast.chunk`` rows per rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import torch

from ..artifacts import data_summary, read_run, save_artifacts
from ..config import ConfigError
from ..engine import gradcache
from ..engine.loop import COMMON_ALIASES, LossOutput, run_stage
from ..engine.settings import OptimSettings, TrainSettings
from ..modeling.settings import ModelSettings
from ..modeling.row_dropout import sample_seeds as row_seeds
from ..objectives.contrastive import gather_groups, supervised_loss, unsupervised_loss


@dataclass
class InitSettings:
    init_from: Optional[str] = None  # a finished stage-1 or stage-2 run; none: the plain base model
    carry_memory: bool = True  # start from that run's memory embeddings


@dataclass
class ContrastSettings:
    kind: Literal["ucl", "scl"] = "ucl"
    temperature: float = 0.05
    attention_dropout: float = 0.2
    chunk: int = 8  # rows encoded at once per rank (gradient caching); >= rows per batch: no caching
    chunk_by_length: bool = True  # cut chunks from the rank's rows sorted by length (same gradients, less padding)
    negatives: int = 1  # scl: hard negatives per query
    one_source_per_batch: bool = False  # scl: a global batch holds one `source` only

    def validate(self) -> None:
        for key, bad, want in (("chunk", self.chunk < 1, "at least 1"), ("temperature", self.temperature <= 0, "> 0"),
                               ("attention_dropout", not 0 <= self.attention_dropout < 1, "in [0, 1)"),
                               ("negatives", self.negatives < 0, ">= 0")):
            if bad:
                raise ConfigError(f"contrast.{key} must be {want}, got {getattr(self, key)}")


@dataclass
class ContrastData:
    path: str = ""
    group_by_length: bool = False  # random batches keep in-batch negatives random
    verify_shards: bool = True
    packing: bool = False  # sequences end to end in rows, no padding, attention isolated per sequence
    max_tokens_per_row: int = 4096  # with packing

    def validate(self) -> None:
        if self.max_tokens_per_row < 1:
            raise ConfigError(f"data.max_tokens_per_row must be at least 1, got {self.max_tokens_per_row}")


@dataclass
class ContrastRecipe:
    model: ModelSettings = field(default_factory=ModelSettings)
    init: InitSettings = field(default_factory=InitSettings)
    data: ContrastData = field(default_factory=ContrastData)
    contrast: ContrastSettings = field(default_factory=ContrastSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    ALIASES: ClassVar[dict[str, str]] = {**COMMON_ALIASES, "init_from": "init.init_from", "chunk": "contrast.chunk",
                                         "pooling": "model.pooling"}

    def validate(self) -> None:
        if self.model.train_input_embeddings:
            raise ConfigError("model.train_input_embeddings is a stage-1 option: a contrastive stage keeps the "
                              "encoder's embeddings as its init_from run left them")

    @property
    def train_memory(self) -> bool:
        """Stages 2-3 keep the memory embeddings frozen unless the recipe says otherwise (the authors merge
        the adapter and attach a fresh LoRA, which leaves only LoRA trainable)."""
        return bool(self.model.train_memory)


class ContrastTask:
    def __init__(self, recipe: ContrastRecipe):
        self.recipe = recipe
        c = recipe.contrast
        b = recipe.train.micro_batch
        self.rows_per_batch = 2 * b if c.kind == "ucl" else b * (2 + c.negatives)
        self.micro_steps_per_batch = math.ceil(self.rows_per_batch / c.chunk)

    def build_model(self, world, device):
        from ..modeling.build import build_model, prepare_for_training

        r = self.recipe
        lineage = memory = None
        if r.init.init_from:
            lineage, memory = read_run(r.init.init_from)
            memory = memory if r.init.carry_memory else None
        model, self.identity, self.lineage = build_model(r.model, r.train.seed, lineage, memory, device)
        model.packing = r.data.max_tokens_per_row if r.data.packing else None
        self.effective = prepare_for_training(model, r.model, device, attention_dropout=r.contrast.attention_dropout,
                                              row_seeded=True, gradient_checkpointing=r.train.gradient_checkpointing,
                                              train_memory=r.train_memory, prefix_ids=self.lineage["prefix_ids"],
                                              compile=r.train.compile,
                                              memory_source=r.init.init_from if memory is not None else "fresh")
        self.pad_id = model.pad_id
        return model

    def build_data(self, world):
        from ..data.contrast import PairBatches, SentenceBatches
        from ..data.shards import open_shards

        r = self.recipe
        kind = "sentences" if r.contrast.kind == "ucl" else "pairs"
        dataset, self.manifest = open_shards(r.data.path, kind, self.identity, r.data.verify_shards)
        self.world = world
        if kind == "sentences":
            return SentenceBatches(dataset, r.train.micro_batch, world.size, world.rank, r.train.seed, self.pad_id,
                                   r.data.group_by_length)
        data = PairBatches(dataset, r.train.micro_batch, world.size, world.rank, r.train.seed, self.pad_id,
                           r.contrast.negatives, r.contrast.one_source_per_batch, r.data.group_by_length)
        if data.dropped and world.main:
            print(f"{data.dropped:,} pairs have fewer than {r.contrast.negatives} hard negatives and are not used")
        return data

    # -- one batch ---------------------------------------------------------------------------------
    def rows(self, batch: dict, step: int, micro: int) -> tuple[gradcache.Rows, dict]:
        b = self.recipe.train.micro_batch
        first = self.world.rank * b  # global index of this rank's first sample
        device = next(iter(batch.values())).device  # built where the batch is: no host round trip
        sample = torch.arange(first, first + b, device=device)
        zeros = torch.zeros(b, dtype=torch.long, device=device)
        seed = self.recipe.train.seed
        if self.recipe.contrast.kind == "ucl":
            ids = torch.cat([batch["ids"], batch["ids"]])
            lengths = torch.cat([batch["lengths"], batch["lengths"]])
            seeds = row_seeds(seed, step, micro, torch.cat([sample, sample]),
                              torch.cat([zeros, zeros + 1]))
            return gradcache.Rows(ids, lengths, seeds), {"view1": b, "view2": b}
        n = self.recipe.contrast.negatives
        parts = [batch["query"], batch["positive"], batch["negative"]]
        width = max(p.shape[1] for p in parts)
        ids = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=self.pad_id) for p in parts])
        lengths = torch.cat([batch["query_len"], batch["positive_len"], batch["negative_len"]])
        neg_sample = sample.repeat_interleave(n)
        neg_role = 2 + torch.arange(n, device=device).repeat(b)
        seeds = row_seeds(seed, step, micro, torch.cat([sample, sample, neg_sample]),
                          torch.cat([zeros, zeros + 1, neg_role]))
        return gradcache.Rows(ids, lengths, seeds), {"query": b, "positive": b, "negative": b * n}

    def loss_fn(self, sizes: dict):
        c = self.recipe.contrast
        fn = unsupervised_loss if c.kind == "ucl" else supervised_loss
        return lambda local: fn(gather_groups(local, sizes), c.temperature)

    def loss(self, engine, batch) -> LossOutput:
        micro = (engine.micro_steps // self.micro_steps_per_batch) % self.recipe.train.grad_accum
        rows, sizes = self.rows(batch, engine.global_steps, micro)
        embed = lambda ids, lengths: engine("embed", ids=ids, lengths=lengths)
        c = self.recipe.contrast
        local, kept = gradcache.first_pass(embed, rows, c.chunk, c.chunk_by_length)
        loss, grad = gradcache.loss_and_row_gradients(local, self.loss_fn(sizes))
        self._pending = (embed, rows, grad, kept)
        return LossOutput(loss, int(rows.lengths.sum()))

    def update(self, engine, out: LossOutput) -> None:
        embed, rows, grad, kept = self._pending
        # DeepSpeed averages gradients over ranks and each rank holds only its rows' share of the global
        # loss's gradient: scale by the world size; average over accumulated batches.
        scale = self.world.size / self.recipe.train.grad_accum
        c = self.recipe.contrast
        gradcache.replay(embed, rows, grad * scale, c.chunk, backward=lambda s: engine.backward(s, scale_wrt_gas=False),
                         step=engine.step, kept=kept, group_by_length=c.chunk_by_length)
        self._pending = None

    def run_info(self) -> dict:
        return {"stage": self.recipe.contrast.kind, "effective": self.effective, "data": data_summary(self.manifest)}

    def save_artifacts(self, engine, directory: str, world) -> None:
        save_artifacts(engine.module, directory, world, self.recipe, self.identity, self.lineage, self.run_info())


def run(args) -> int:
    return run_stage(ContrastRecipe, ContrastTask, args)
