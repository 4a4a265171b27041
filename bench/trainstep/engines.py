"""The project's model and training step as the stages build them, on plain torch or DeepSpeed."""
from __future__ import annotations

import tempfile
from typing import Callable

from .archs import ARCHS, MEMORY_TOKENS, SEED


def build_base(name: str, dtype: str, attention: str, device, weights: str | None = None):
    """A random-weight causal LM of architecture ``name``, through the project's loader (offline: the
    config is written to a temporary folder), built on ``device``: every weight is created and initialised
    there (a 7B model on the GPU in seconds, not on the host; ``meta`` for placement tests). ``weights``:
    the real model from that folder or model-store name instead, refused unless it has ``name``'s shape."""
    import transformers

    from trainer.modeling.loading import load_causal_lm

    cls, fields, _ = ARCHS[name]
    if weights:
        model, path = load_causal_lm(weights, dtype, attention, device=device)
        shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "vocab_size")  # what the FLOP count and the batches assume
        wrong = {k: (getattr(model.config, k, None), fields[k]) for k in shape
                 if k in fields and getattr(model.config, k, None) != fields[k]}
        if wrong:
            raise SystemExit(f"--weights {path}: not the {name} shape: " +
                             ", ".join(f"{k} {got} (expected {want})" for k, (got, want) in wrong.items()))
        return model
    with tempfile.TemporaryDirectory() as tmp:
        getattr(transformers, cls)(**fields).save_pretrained(tmp)
        model, _ = load_causal_lm(tmp, dtype, attention, random_init=True, seed=SEED, device=device)
    return model


def lora_settings():
    from trainer.modeling.adapters import LoraSettings

    return LoraSettings(r=16, alpha=32, dropout=0.05)


def build_project_model(a, stage: str):
    """The project's Compressor, set up as PretrainTask/ContrastTask.build_model set it up."""
    from trainer.modeling.adapters import enable_gradient_checkpointing
    from trainer.modeling.compressor import build_compressor
    from trainer.modeling.dropout import enable_row_seeded_dropout, set_attention_dropout

    import torch

    base = build_base(a.model_config, a.dtype, a.attention, a.device, getattr(a, "weights", None))
    with torch.device(a.device):  # LoRA weights, memory tokens and buffers are created where the base is
        model = build_compressor(base, MEMORY_TOKENS, ARCHS[a.model_config][2], 0, lora_settings(), SEED)
    model.loss_chunk = a.loss_chunk
    if stage in ("ucl", "scl"):  # as ContrastTask: row-seeded LoRA and attention dropout keep caching exact
        enable_row_seeded_dropout(model, a.attention_dropout)
    else:
        set_attention_dropout(model.model, 0.0)
    if stage != "encode":  # training stages: the whole run packed or not; encode switches per order
        model.packing = a.packing or None
    if a.gradient_checkpointing and stage != "encode":
        enable_gradient_checkpointing(model.model, model.switch)
    return model.train(stage != "encode")


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
                                    attention_dropout=a.attention_dropout, chunk_by_length=a.chunk_by_length)
        task = ContrastTask(ContrastRecipe(contrast=settings, train=train))
        task.world, task.pad_id = World(0, 1, 0), model.pad_id  # what ContrastTask.build_model/build_data set
    gas = task.micro_steps_per_batch
    engine = deepspeed_engine(model, a, gas) if a.deepspeed else PlainEngine(model, gas)

    def step(batch: dict) -> float:
        out = task.loss(engine, batch)
        task.update(engine, out)
        return float(out.loss.detach())

    return step, engine
