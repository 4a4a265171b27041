"""Stage 1, compression pretraining (DESIGN.md §1): ``llm2comp pretrain --config RECIPE.yaml [key=value ...]``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import torch

from ..artifacts import data_summary, save_artifacts

from ..data.compression import CompressionBatches
from ..config import ConfigError
from ..engine.loop import COMMON_ALIASES, LossOutput, run_stage
from ..engine.settings import OptimSettings, TrainSettings
from ..modeling.row_dropout import sample_seeds
from ..modeling.settings import ModelSettings

@dataclass
class DataSettings:
    path: str = ""
    group_by_length: bool = True
    verify_shards: bool = True
    packing: bool = False  # sequences end to end in rows, no padding, attention isolated per sequence
    max_tokens_per_row: int = 4096  # with packing

    def validate(self) -> None:
        if self.max_tokens_per_row < 1:
            raise ConfigError(f"data.max_tokens_per_row must be at least 1, got {self.max_tokens_per_row}")

@dataclass
class ObjectiveSettings:
    kind: Literal["kl", "nll", "rc", "mntp"] = "kl"  # mntp: LLM2Vec's masked next-token prediction
    loss_chunk: int = 1024  # tokens per LM-head chunk
    mask_ratio: float = 0.2  # mntp: fraction of text tokens selected and corrupted
    mask_mode: Literal["bert", "all"] = "bert"  # mntp: 80/10/10 mask/random/keep (LLM2Vec's), or all masked
    mask_token: Optional[str] = None  # mntp: a vocabulary entry; default the tokenizer's, else "_" (LLM2Vec)

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"objective.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.loss_chunk < 1:
            raise ConfigError(f"objective.loss_chunk must be at least 1, got {self.loss_chunk}")

@dataclass
class EvalSettings:
    """The held-out windows of the compression diagnostics (``trainer/objectives/diagnostics.py``), run every
    ``train.eval_every`` steps and at the end; the rule that picks them: ``trainer/data/holdout.py``."""

    windows: int = 256  # 0: no diagnostics
    path: str = ""  # a separate `llm2comp prep compression` output; empty: held out of data.path
    micro_batch: int = 0  # 0: train.micro_batch

    def validate(self) -> None:
        for key in ("windows", "micro_batch"):
            if getattr(self, key) < 0:
                raise ConfigError(f"eval.{key} must be >= 0 (0: {'no diagnostics' if key == 'windows' else 'train.micro_batch'}), "
                                  f"got {getattr(self, key)}")


@dataclass
class PretrainRecipe:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    ALIASES: ClassVar[dict[str, str]] = {**COMMON_ALIASES, "objective": "objective.kind", "pooling": "model.pooling"}

    def validate(self) -> None:
        if self.objective.kind != "mntp" and self.model.pooling != "memory":
            raise ConfigError(f"objective {self.objective.kind} compresses into memory tokens: it needs "
                              f"model.pooling=memory, got {self.model.pooling} (mntp trains any pooling)")
        if self.objective.kind == "mntp" and self.model.train_memory:
            raise ConfigError("model.train_memory true with objective mntp: its loss never reaches the memory tokens")

    @property
    def train_memory(self) -> bool:
        """Stage 1 trains the memory tokens unless the recipe says not to (mntp cannot reach them)."""
        if self.objective.kind == "mntp":
            return False
        return True if self.model.train_memory is None else self.model.train_memory

class PretrainTask:
    def __init__(self, recipe: PretrainRecipe):
        self.recipe = recipe
        self.identity = None

    def build_model(self, world, device):
        from ..modeling.build import build_model, model_tokenizer, prepare_for_training
        from ..objectives.mntp import mask_token_id

        r = self.recipe
        mntp = r.objective.kind == "mntp"
        model, self.identity, self.lineage = build_model(r.model, r.train.seed, device=device,
                                                         embedding_delta=r.model.train_input_embeddings)
        model.loss_chunk = r.objective.loss_chunk
        model.packing = r.data.max_tokens_per_row if r.data.packing else None
        if mntp:
            self.mask_id = mask_token_id(model_tokenizer(r.model)[0], r.objective.mask_token)
        # mntp never reaches the memory tokens (memory pooling after an mntp stage 1 starts from fresh ones).
        self.effective = prepare_for_training(model, r.model, device, attention_dropout=0.0, row_seeded=False,
                                              gradient_checkpointing=r.train.gradient_checkpointing,
                                              train_memory=r.train_memory, prefix_ids=self.lineage["prefix_ids"],
                                              compile=r.train.compile)
        self.pad_id = model.pad_id
        return model

    def build_data(self, world):
        from ..data.contrast import SentenceBatches
        from ..data.shards import open_shards

        r = self.recipe
        mntp = r.objective.kind == "mntp"
        kinds = ("compression", "sentences") if mntp else "compression"
        dataset, self.manifest = open_shards(r.data.path, kinds, self.identity, r.data.verify_shards)
        self.world = world
        rows = self.build_eval(dataset, kinds)
        if self.manifest["kind"] == "sentences":
            return SentenceBatches(dataset, r.train.micro_batch, world.size, world.rank, r.train.seed, self.pad_id,
                                   r.data.group_by_length, rows=rows)
        return CompressionBatches(dataset, r.train.micro_batch, world.size, world.rank, r.train.seed,
                                  self.pad_id, r.data.group_by_length, joined=mntp, rows=rows)

    def build_eval(self, dataset, kinds):
        """The held-out diagnostics (``trainer/stages/held_out.py``); returns the rows left to train on."""
        from .held_out import HeldOut

        self.held_out = HeldOut(self.recipe, dataset, kinds, self.identity, self.world, self.pad_id,
                                getattr(self, "mask_id", None))
        return self.held_out.train_rows

    def evaluate(self, engine) -> dict:
        figures = self.held_out(engine)
        if figures:
            self.last_eval = figures
        return figures

    def eval_summary(self, figures: dict) -> str:
        from ..objectives.diagnostics import summary

        return summary(figures)

    def loss(self, engine, batch) -> LossOutput:
        o = self.recipe.objective
        if o.kind == "mntp":
            b = batch["ids"].shape[0]
            sample = torch.arange(self.world.rank * b, (self.world.rank + 1) * b, device=batch["ids"].device)
            micro = engine.micro_steps % self.recipe.train.grad_accum
            seeds = sample_seeds(self.recipe.train.seed, engine.global_steps, micro, sample, torch.zeros_like(sample))
            loss = engine("mntp", ids=batch["ids"], lengths=batch["lengths"], seeds=seeds, ratio=o.mask_ratio,
                          mask_id=self.mask_id, mode=o.mask_mode)
            return LossOutput(loss, int(batch["lengths"].sum()))
        loss = engine(o.kind, **batch)
        tokens = int(batch["context_len"].sum() + batch["continuation_len"].sum())
        return LossOutput(loss, tokens)

    micro_steps_per_batch = 1

    def update(self, engine, out: LossOutput) -> None:
        engine.backward(out.loss)
        engine.step()

    def run_info(self) -> dict:
        return {"stage": "pretrain", "objective": self.recipe.objective.kind, "effective": self.effective,
                "data": data_summary(self.manifest), "diagnostics": getattr(self, "last_eval", None),
                "eval_data": self.held_out.info}

    def save_artifacts(self, engine, directory: str, world) -> None:
        save_artifacts(engine.module, directory, world, self.recipe, self.identity, self.lineage, self.run_info())

def run(args) -> int:
    return run_stage(PretrainRecipe, PretrainTask, args)
