"""A stage's output, ``OUTPUT_DIR/final/``: the small files the next stage and export read.

``adapter/`` (peft folder), ``memory.safetensors``, ``embedding_delta.safetensors`` (when E trained an
input-embedding delta), ``recipe.yaml`` (resolved), ``tokenizer_identity.json``, ``lineage.json``: how to
rebuild the base this run's adapter applies to (the base model, then every earlier stage's adapter merged
in order and their embedding deltas folded in) and the first token every input starts with, and
``run_info.json``: the stage, the settings its modules really had, what its data was made with
(instruction template, maximum length), which export reads, and stage 1's held-out diagnostics.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

import torch

from data_prep import jsonio
from data_prep.errors import UserError

from .config import save_config

FINAL = "final"


def _gathered(params):
    """ZeRO-3 partitions parameters; gather the (small) trainable ones to save them."""
    try:
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()


RUN_INFO = "run_info.json"


def data_summary(manifest: dict) -> dict:
    """What export needs to know of a stage's shards: how texts were formatted and how long they could be."""
    options = manifest.get("args", {}).get("options", {})
    keep = ("max_tokens", "template", "instruction", "instructions")
    return {"kind": manifest.get("kind"), **{k: options[k] for k in keep if k in options},
            "rows": manifest.get("totals", {}).get("rows"), "tokens": manifest.get("totals", {}).get("tokens")}


def save_artifacts(model, directory: str, world, recipe, identity: dict, lineage: dict, info: dict) -> None:
    from safetensors.torch import save_file

    with _gathered([p for p in model.parameters() if p.requires_grad]):
        if world.main:
            os.makedirs(directory, exist_ok=True)
            model.model.save_pretrained(os.path.join(directory, "adapter"))
            if model.memory is not None:  # mean / last pooling: no memory tokens
                save_file({"memory": model.memory.weight.detach().float().cpu().contiguous()},
                          os.path.join(directory, "memory.safetensors"))
            deltas = list(lineage.get("embedding_deltas", []))
            if model.embedding_delta is not None:
                from .modeling.embedding_delta import FILE, save_delta

                save_delta(model.embedding_delta.weight, os.path.join(directory, FILE))
                deltas.append(os.path.abspath(os.path.join(directory, FILE)))
            save_config(recipe, os.path.join(directory, "recipe.yaml"))
            with open(os.path.join(directory, "tokenizer_identity.json"), "w") as fh:
                jsonio.dump(identity, fh, indent=2)
            with open(os.path.join(directory, RUN_INFO), "w") as fh:
                jsonio.dump(info, fh, indent=2)
            mine = {**lineage, "adapters": [*lineage["adapters"], os.path.abspath(os.path.join(directory, "adapter"))],
                    "embedding_deltas": deltas}
            with open(os.path.join(directory, "lineage.json"), "w") as fh:
                jsonio.dump(mine, fh, indent=2)


def read_run(run_dir: str, what: str = "init.init_from") -> tuple[dict, Optional[torch.Tensor]]:
    """The lineage and memory embeddings (None: the run pooled without them) of a finished run (a run
    directory or its ``final/``); ``what`` names the setting in errors (``--run`` for export)."""
    from safetensors.torch import load_file

    final = run_dir if os.path.exists(os.path.join(run_dir, "lineage.json")) else os.path.join(run_dir, FINAL)
    path = os.path.join(final, "lineage.json")
    if not os.path.exists(path):
        unfinished = os.path.isdir(os.path.join(run_dir, "checkpoints"))
        raise UserError(f"{what} {run_dir}: no {FINAL}/lineage.json; " + (
            "the run has not finished (it has checkpoints: run the same command again to finish it)"
            if unfinished else "not a finished llm2comp run"))
    with open(path) as fh:
        lineage = json.load(fh)
    missing = [a for a in lineage["adapters"] if not os.path.isdir(a)]
    missing += [d for d in lineage.get("embedding_deltas", []) if not os.path.isfile(d)]
    if missing:
        raise UserError(f"{what} {run_dir}: {missing[0]} named in lineage.json is missing")
    memory = os.path.join(final, "memory.safetensors")
    return lineage, load_file(memory)["memory"] if os.path.exists(memory) else None


def read_run_info(final: str) -> dict:
    """A stage's ``run_info.json`` ({} for runs made before it existed)."""
    path = os.path.join(final, RUN_INFO)
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)
