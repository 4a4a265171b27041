"""An llm2comp export as an MTEB model (``mteb``'s encoder protocol), with per-task instructions; a plain
causal LM with a pooling baseline (``make_text_model``, no instructions: only an export knows its template).

Instructions (LLM2Vec / E5 style) are applied with the export's instruction template, to queries only
(``prompt_type`` query; documents get none) and, for symmetric tasks (STS, classification, clustering,
where mteb passes no prompt type), to every text, as LLM2Vec's and E5's evaluations do. Which instruction
a task gets: the user's instruction file, else the one shipped with llm2comp
(``trainer/serving/evaluation/instructions.json``), else the task's own metadata prompt, else mteb's default for
its task type. Texts are encoded longest first (``Encoder.encode``); under torchrun / srun every rank
encodes its share of each call's texts and all ranks exchange the embeddings, so rank 0 scores them all.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

SHIPPED_INSTRUCTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instructions.json")


def load_instructions(path: Optional[str] = None) -> dict[str, str]:
    """The shipped task -> instruction table, overridden entry by entry by ``path`` (a JSON object, the
    format of ``prep pairs --instructions``)."""
    from data_prep.cli import load_instructions as read_table

    with open(SHIPPED_INSTRUCTIONS) as fh:
        table = json.load(fh)
    if path:
        table.update(read_table(path))
    return table


def make_model(encoder, name: str, instructions: dict[str, str], batch_size: int, world=None):
    """``encoder``: an ``trainer.serving.Encoder``; ``name``: the model's name in results."""
    return make_text_model(lambda texts, instruction, bs: shard_encode(encoder, texts, instruction, bs, world), name,
                           encoder.dimension, str(encoder.config.get("tokenizer_hash", "local"))[-12:], instructions,
                           batch_size)


def make_text_model(encode_texts, name: str, dimension: int, revision: str, instructions: Optional[dict[str, str]],
                    batch_size: int):
    """An mteb model around ``encode_texts(texts, instruction or None, batch_size) -> float32 [N, dimension]``.
    ``instructions``: the task -> instruction table (``task_instruction``), or None for a model that takes none
    (a plain causal LM with a pooling baseline)."""
    from mteb.models import ModelMeta
    from mteb.models.abs_encoder import AbsEncoder

    class LLM2CompMTEB(AbsEncoder):
        def __init__(self):
            self.prompts_dict, self.batch_size = dict(instructions or {}), batch_size
            self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(name=name, revision=revision,
                                                                          embed_dim=dimension))
            self.instructions_used: dict[str, str] = {}

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = list(inputs.dataset["text"])
            kind = getattr(prompt_type, "value", prompt_type)
            instruction = ""
            if instructions is not None and kind != "document":
                instruction = task_instruction(self.prompts_dict, task_metadata, kind)
            self.instructions_used[f"{task_metadata.name}/{kind or 'all'}"] = instruction
            return encode_texts(texts, instruction or None, kwargs.get("batch_size", self.batch_size))

    return LLM2CompMTEB()


def task_instruction(table: dict[str, str], task_metadata, kind: Optional[str]) -> str:
    """The table's entry for the task (an empty one means none), else the task's own prompt (for queries,
    when it names them), else mteb's default for the task type. Without the trailing '.' or ':' that the
    instruction template's own separator replaces."""
    if task_metadata.name in table:
        instruction = table[task_metadata.name]
    else:
        prompt = task_metadata.prompt
        if isinstance(prompt, dict):
            prompt = prompt.get(kind or "query", "")
        if prompt:
            instruction = prompt
        else:
            from mteb.abstasks.abstask import get_abstask_prompt

            instruction = get_abstask_prompt(task_metadata.name) or ""
    return instruction.strip().rstrip(".:").strip()


def shard_encode(encoder, texts: list[str], instruction: Optional[str], batch_size: int, world=None) -> np.ndarray:
    """Every rank encodes every world-size-th text (balanced lengths), then all ranks gather the rest."""
    if world is None or world.size == 1:
        return encoder.encode(texts, batch_size, instruction=instruction)
    import torch
    import torch.distributed as dist

    mine = list(range(world.rank, len(texts), world.size))
    local = encoder.encode([texts[i] for i in mine], batch_size, instruction=instruction, convert_to_tensor=True)
    device = local.device if local.device.type == "cuda" else torch.device("cpu")
    longest = (len(texts) + world.size - 1) // world.size
    padded = torch.zeros(longest, encoder.dimension, dtype=torch.float32, device=device)
    padded[: len(mine)] = local.to(device)
    everyone = [torch.zeros_like(padded) for _ in range(world.size)]
    dist.all_gather(everyone, padded)
    out = np.zeros((len(texts), encoder.dimension), dtype=np.float32)
    for r in range(world.size):
        idx = list(range(r, len(texts), world.size))
        out[idx] = everyone[r][: len(idx)].cpu().numpy()
    return out
