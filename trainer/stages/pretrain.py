"""Stage 1, compression pretraining (DESIGN.md §1): ``llm2comp pretrain --config RECIPE.yaml [key=value ...]``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..artifacts import data_summary, save_artifacts

from ..data.compression import CompressionBatches
from ..data.shards import open_shards
from ..engine.loop import COMMON_ALIASES, LossOutput, run_stage
from ..engine.settings import OptimSettings, TrainSettings
from ..modeling.settings import ModelSettings

@dataclass
class DataSettings:
    path: str = ""
    group_by_length: bool = True
    verify_shards: bool = True

@dataclass
class ObjectiveSettings:
    kind: Literal["kl", "nll", "rc"] = "kl"
    loss_chunk: int = 1024  # tokens per LM-head chunk

@dataclass
class PretrainRecipe:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    ALIASES: ClassVar[dict[str, str]] = {**COMMON_ALIASES, "objective": "objective.kind"}

class PretrainTask:
    def __init__(self, recipe: PretrainRecipe):
        self.recipe = recipe
        self.identity = None

    def build_model(self, world, device):
        from ..modeling.build import build_model, prepare_for_training

        r = self.recipe
        model, self.identity, self.lineage = build_model(r.model, r.train.seed)
        model.loss_chunk = r.objective.loss_chunk
        self.effective = prepare_for_training(model, r.model, device, attention_dropout=0.0, row_seeded=False,
                                              gradient_checkpointing=r.train.gradient_checkpointing)
        self.pad_id = model.pad_id
        return model

    def build_data(self, world):
        r = self.recipe
        dataset, self.manifest = open_shards(r.data.path, "compression", self.identity, r.data.verify_shards)
        return CompressionBatches(dataset, r.train.micro_batch, world.size, world.rank, r.train.seed,
                                  self.pad_id, r.data.group_by_length)

    def loss(self, engine, batch) -> LossOutput:
        loss = engine(self.recipe.objective.kind, **batch)
        tokens = int(batch["context_len"].sum() + batch["continuation_len"].sum())
        return LossOutput(loss, tokens)

    micro_steps_per_batch = 1

    def update(self, engine, out: LossOutput) -> None:
        engine.backward(out.loss)
        engine.step()

    def run_info(self) -> dict:
        return {"stage": "pretrain", "objective": self.recipe.objective.kind, "effective": self.effective,
                "data": data_summary(self.manifest)}

    def save_artifacts(self, engine, directory: str, world) -> None:
        save_artifacts(engine.module, directory, world, self.recipe, self.identity, self.lineage, self.run_info())

def run(args) -> int:
    return run_stage(PretrainRecipe, PretrainTask, args)
