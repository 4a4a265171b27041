"""``llm2comp export --run DIR --output DIR``: one self-contained encoder directory in safetensors.

What the encoder needs to format and cut its inputs as training did comes from the runs themselves
(``final/run_info.json`` of every stage): the instruction template of the last stage trained on pairs,
and the longest text any stage's shards allowed. The export names its lineage by model name and stage,
never by a path of the training machine.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from data_prep.errors import UserError

from .artifacts import FINAL, read_run, read_run_info
from .encoder import CONFIG, FORMAT_VERSION
from .modeling.row_dropout import ATTENTION_NAME as ROW_DROPOUT

DEFAULT_TEMPLATE = "{instruction}: {query}"  # `llm2comp prep pairs`'s default
DEFAULT_MAX_LENGTH = 512


def _stage_finals(lineage: dict) -> list[str]:
    return [os.path.dirname(adapter) for adapter in lineage["adapters"]]


def _base_name(base: dict) -> str:
    """The base model as a user would name it: a model-store or Hub name, or a local folder's name."""
    name = base.get("name") or base["path"]
    return os.path.basename(os.path.normpath(name)) if os.path.isabs(name) or os.path.isdir(name) else name


def text_settings(infos: list[dict], max_length: Optional[int] = None) -> dict:
    """Instruction template and maximum length for the encoder, from the stages' run_info (oldest first)."""
    pairs = [i["data"] for i in infos if i.get("data", {}).get("kind") == "pairs"]
    lengths = [i["data"]["max_tokens"] for i in infos if i.get("data", {}).get("max_tokens")]
    return {
        "instruction_template": pairs[-1].get("template", DEFAULT_TEMPLATE) if pairs else DEFAULT_TEMPLATE,
        "instruction_template_from": "the last stage trained on pairs" if pairs else "prep's default (no pairs stage)",
        "max_length": int(max_length or (max(lengths) if lengths else DEFAULT_MAX_LENGTH)),
    }


def public_lineage(lineage: dict, infos: list[dict]) -> dict:
    """The lineage without paths: the base model by name, then each stage by what it was."""
    base = lineage["base"]
    stages = []
    for info in infos:
        data = info.get("data", {})
        stages.append({"stage": info.get("stage", "unknown"), **({"objective": info["objective"]} if "objective" in info else {}),
                       "data": {k: data[k] for k in ("kind", "rows", "tokens", "max_tokens") if k in data}})
    return {"base": {"name": _base_name(base), "random_init": base["random_init"],
                     "config_overrides": base["config_overrides"]}, "stages": stages}


def export(run_dir: str, output: str, dtype: str = "auto", max_length: Optional[int] = None) -> str:
    from peft import PeftModel
    from safetensors.torch import save_file

    from .modeling.build import model_tokenizer
    from .modeling.loading import load_causal_lm
    from .modeling.settings import ModelSettings

    lineage, memory = read_run(run_dir)
    final = run_dir if os.path.exists(os.path.join(run_dir, "lineage.json")) else os.path.join(run_dir, FINAL)
    with open(os.path.join(final, "tokenizer_identity.json")) as fh:
        identity = json.load(fh)
    recipe = _recipe(final)
    infos = [read_run_info(f) for f in _stage_finals(lineage)]
    base = lineage["base"]
    model_dtype = recipe["model"]["dtype"] if dtype == "auto" else dtype
    model, _ = load_causal_lm(base["path"], model_dtype, "auto", base["random_init"], base["config_overrides"], base["seed"])
    for adapter in lineage["adapters"]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tok, _ = model_tokenizer(ModelSettings(path=base["path"], tokenizer=recipe["model"].get("tokenizer") or base["path"]))
    os.makedirs(output, exist_ok=True)
    model.config._name_or_path = _base_name(base)  # not the training machine's folder
    model.save_pretrained(output, safe_serialization=True)
    tok.name_or_path = _base_name(base)
    tok.save_pretrained(output)
    pooling = recipe["model"].get("pooling", "memory")
    if pooling == "memory":
        save_file({"memory": memory.to(model.dtype).contiguous()}, os.path.join(output, "memory.safetensors"))
    trained_attention = (infos[-1].get("effective") or {}).get("attention_implementation") if infos else None
    if isinstance(trained_attention, str) and trained_attention.startswith(ROW_DROPOUT):
        trained_attention = trained_attention[len(ROW_DROPOUT) + 1:]  # the wrapped implementation
    with open(os.path.join(output, CONFIG), "w") as fh:
        json.dump({
            "format_version": FORMAT_VERSION,
            "memory_tokens": int(memory.shape[0]) if pooling == "memory" else 0,
            "pooling": pooling,
            "prefix_ids": identity["prefix_ids"],
            "pad_id": tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0),
            **text_settings(infos, max_length),
            "trained_attention": trained_attention,
            "tokenizer_hash": identity["hash"],
            "lineage": public_lineage(lineage, infos),
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
    print(export(args.run, args.output, args.dtype, args.max_length))
    return 0
