"""``llm2comp export --run DIR --output DIR``: one self-contained encoder directory in safetensors."""
from __future__ import annotations

import json
import os

import torch

from data_prep.errors import UserError

from .artifacts import FINAL, read_run
from .encoder import CONFIG, FORMAT_VERSION


def export(run_dir: str, output: str, dtype: str = "auto") -> str:
    from peft import PeftModel
    from safetensors.torch import save_file

    from .config import load_config
    from .modeling.build import model_tokenizer
    from .modeling.loading import load_causal_lm

    lineage, memory = read_run(run_dir)
    final = run_dir if os.path.exists(os.path.join(run_dir, "lineage.json")) else os.path.join(run_dir, FINAL)
    with open(os.path.join(final, "tokenizer_identity.json")) as fh:
        identity = json.load(fh)
    recipe = _recipe(final)
    base = lineage["base"]
    model_dtype = recipe["model"]["dtype"] if dtype == "auto" else dtype
    model, _ = load_causal_lm(base["path"], model_dtype, "sdpa", base["random_init"], base["config_overrides"], base["seed"])
    for adapter in lineage["adapters"]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    from .modeling.settings import ModelSettings

    tok, _ = model_tokenizer(ModelSettings(path=base["path"], tokenizer=recipe["model"].get("tokenizer") or base["path"]))
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tok.save_pretrained(output)
    save_file({"memory": memory.to(model.dtype).contiguous()}, os.path.join(output, "memory.safetensors"))
    template = "{instruction}: {query}"
    with open(os.path.join(output, CONFIG), "w") as fh:
        json.dump({
            "format_version": FORMAT_VERSION,
            "memory_tokens": int(memory.shape[0]),
            "pooling": "mean of the memory-token states",
            "prefix_ids": identity["prefix_ids"],
            "pad_id": tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0),
            "instruction_template": template,
            "max_length": 512,
            "tokenizer_hash": identity["hash"],
            "lineage": lineage,
        }, fh, indent=2)
    # sentence-transformers loads the directory through this module (llm2comp must be installed).
    with open(os.path.join(output, "modules.json"), "w") as fh:
        json.dump([{"idx": 0, "name": "0", "path": "", "type": "trainer.st_module.LLM2CompModule"}], fh, indent=2)
    return output


def _recipe(final: str) -> dict:
    import yaml

    path = os.path.join(final, "recipe.yaml")
    if not os.path.exists(path):
        raise UserError(f"{final}: no recipe.yaml; not a finished llm2comp run")
    with open(path) as fh:
        return yaml.safe_load(fh)


def run(args) -> int:
    print(export(args.run, args.output, args.dtype))
    return 0
