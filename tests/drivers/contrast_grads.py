"""Test driver: the gradients of one optimizer step of a contrastive stage, (a) through the real engine
(DeepSpeed, the task's own loss and update, gradient caching, any world size; run under torchrun) or
(b) as a single-process, uncached, full-batch reference (each accumulated global batch encoded once with
a graph, plain autograd). Writes {loss, grads, ...} to OUT (rank 0).

    python -m torch.distributed.run --nproc-per-node 2 tests/drivers/contrast_grads.py cached OUT RECIPE k=v...
    python tests/drivers/contrast_grads.py reference OUT RECIPE k=v...   (train.micro_batch = the global batch)

``LLM2COMP_TEST_ACCUM=bf16`` (cached mode) removes the fp32 gradient-accumulation setting from the
DeepSpeed config, to measure what DeepSpeed's default would do.
"""
import faulthandler
import os
import sys

import torch

from trainer.config import load_config
from trainer.engine import deepspeed_setup, gradcache
from trainer.engine.dist import World, exit_process, init_distributed, shutdown, world_from_env
from trainer.engine.loop import seed_everything
from trainer.modeling import row_dropout
from trainer.objectives.contrastive import supervised_loss, unsupervised_loss
from trainer.stages.contrast import ContrastRecipe, ContrastTask


def reference(out, recipe, task):
    world = World(0, 1, 0)
    seed_everything(recipe.train.seed, 0)
    model = task.build_model(world, torch.device("cpu")).train()
    batches = iter(task.build_data(world))
    accum = recipe.train.grad_accum
    total = 0.0
    for micro in range(accum):
        rows, sizes = task.rows(next(batches), step=0, micro=micro)
        loss = task.loss_fn(sizes)(gradcache.encode(model.embed_texts, rows))
        (loss / accum).backward()
        total += loss.item() / accum
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"loss": total, "grads": grads, "dropout_calls": row_dropout.STATS["dropout_calls"]}, out)


def cached(out, recipe, task):
    from deepspeed.utils import safe_get_full_grad

    if os.environ.get("LLM2COMP_TEST_ACCUM") == "bf16":
        load = deepspeed_setup.load_ds_config

        def without_fp32_accumulation(*args, **kwargs):
            config = load(*args, **kwargs)
            config.pop("data_types", None)
            return config

        deepspeed_setup.load_ds_config = without_fp32_accumulation
    world = world_from_env()
    device = init_distributed(world)
    seed_everything(recipe.train.seed, world.rank)
    model = task.build_model(world, device)
    engine, _, _, ds_config = deepspeed_setup.initialize(model, recipe.train, recipe.optim, task.micro_steps_per_batch)
    batches = iter(task.build_data(world))
    captured, losses, alone = {}, [], None
    real_step = engine.step

    def step():  # the task's update calls engine.step(); read the full gradients at the boundary first
        if engine.is_gradient_accumulation_boundary():
            for n, p in engine.module.named_parameters():
                if p.requires_grad:
                    captured[n] = safe_get_full_grad(p).detach().float().cpu().clone()
        real_step()

    engine.step = step
    for micro in range(recipe.train.grad_accum):
        batch = next(batches)
        out_loss = task.loss(engine, batch)
        losses.append(out_loss.loss.item())
        if alone is None:
            # The loss this rank would compute from its own rows alone (no negatives from other ranks).
            embed, rows, _, _ = task._pending
            _, sizes = task.rows(batch, engine.global_steps, 0)
            fn = unsupervised_loss if recipe.contrast.kind == "ucl" else supervised_loss
            with torch.no_grad():
                local = gradcache.encode_without_graph(embed, rows, recipe.contrast.chunk)
                alone = fn(dict(zip(sizes, torch.split(local, list(sizes.values())))), recipe.contrast.temperature).item()
        task.update(engine, out_loss)
    assert captured and engine.global_steps == 1, "no accumulation boundary reached, or more than one"
    if world.main:
        torch.save({"loss": sum(losses) / len(losses), "alone": alone, "grads": captured,
                    "dropout_calls": row_dropout.STATS["dropout_calls"], "data_types": ds_config.get("data_types")}, out)
    shutdown()
    exit_process(0)  # as `llm2comp` does: teardown with live gloo groups can abort a finished rank


def main(mode, out, recipe_path, *overrides):
    faulthandler.enable()  # a rank that aborts (SIGABRT, SIGSEGV) prints its Python stack
    recipe = load_config(ContrastRecipe, recipe_path, overrides)
    task = ContrastTask(recipe)
    (reference if mode == "reference" else cached)(out, recipe, task)


if __name__ == "__main__":
    main(*sys.argv[1:])
