"""Test driver: the gradients of one contrastive step, (a) through the real engine (DeepSpeed, gradient
caching, any world size; run under torchrun) or (b) as a single-process, uncached, full-batch reference
(one encode of the whole global batch with a graph, plain autograd). Writes {loss, grads} to OUT (rank 0).

    python -m torch.distributed.run --nproc-per-node 2 tests/drivers/contrast_grads.py cached OUT RECIPE k=v...
    python tests/drivers/contrast_grads.py reference OUT RECIPE k=v...   (train.micro_batch = the global batch)
"""
import faulthandler
import sys

import torch

from trainer.config import load_config
from trainer.engine import gradcache
from trainer.engine.deepspeed_setup import initialize
from trainer.engine.dist import World, exit_process, init_distributed, shutdown, world_from_env
from trainer.engine.loop import seed_everything
from trainer.objectives.contrastive import gather_groups, supervised_loss, unsupervised_loss
from trainer.stages.contrast import ContrastRecipe, ContrastTask


def main(mode, out, recipe_path, *overrides):
    faulthandler.enable()  # a rank that aborts (SIGABRT, SIGSEGV) prints its Python stack
    recipe = load_config(ContrastRecipe, recipe_path, overrides)
    task = ContrastTask(recipe)
    if mode == "reference":
        world = World(0, 1, 0)
        seed_everything(recipe.train.seed, 0)
        model = task.build_model(world, torch.device("cpu")).train()
        batch = next(iter(task.build_data(world)))
        rows, sizes = task.rows(batch, step=0, micro=0)
        loss = task.loss_fn(sizes)(gradcache.encode(model.embed_texts, rows))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"loss": loss.item(), "grads": grads}, out)
        return
    from deepspeed.utils import safe_get_full_grad

    world = world_from_env()
    device = init_distributed(world)
    seed_everything(recipe.train.seed, world.rank)
    model = task.build_model(world, device)
    engine, *_ = initialize(model, recipe.train, recipe.optim, task.micro_steps_per_batch)
    batch = next(iter(task.build_data(world)))
    out_loss = task.loss(engine, batch)
    embed, rows, grad, kept = task._pending
    # The loss this rank would compute from its own rows alone (no negatives from other ranks).
    _, sizes = task.rows(batch, engine.global_steps, 0)
    fn = unsupervised_loss if recipe.contrast.kind == "ucl" else supervised_loss
    with torch.no_grad():
        local = gradcache.encode_without_graph(embed, rows, recipe.contrast.chunk)
        alone = fn(dict(zip(sizes, torch.split(local, list(sizes.values())))), recipe.contrast.temperature).item()
    captured = {}

    def step():
        if engine.is_gradient_accumulation_boundary():
            for n, p in engine.module.named_parameters():
                if p.requires_grad:
                    captured[n] = safe_get_full_grad(p).detach().float().cpu().clone()
        engine.step()

    scale = world.size / recipe.train.grad_accum
    gradcache.replay(embed, rows, grad * scale, recipe.contrast.chunk,
                     backward=lambda s: engine.backward(s, scale_wrt_gas=False), step=step, kept=kept)
    assert captured, "no accumulation boundary reached"
    if world.main:
        torch.save({"loss": out_loss.loss.item(), "alone": alone, "grads": captured}, out)
    shutdown()
    exit_process(0)  # as `llm2comp` does: teardown with live gloo groups can abort a finished rank


if __name__ == "__main__":
    main(*sys.argv[1:])
