"""``llm2comp export --run DIR --output DIR``: one self-contained encoder directory in safetensors.

What the encoder needs to format and cut its inputs as training did comes from the runs themselves
(``final/run_info.json`` of every stage): the instruction template of the last stage trained on pairs,
and the longest text any stage's shards allowed. The export names its lineage by model name and stage,
never by a path of the training machine.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from data_prep import jsonio
from data_prep.errors import UserError

from ..artifacts import FINAL, read_run, read_run_info
from .encoder import CONFIG, FORMAT_VERSION, ST_CONFIG
from ..modeling.row_dropout import ATTENTION_NAME as ROW_DROPOUT

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


def query_prompt(template: str, instruction: str) -> str:
    """The literal prefix sentence-transformers' ``query`` prompt can carry: the template up to the query,
    with the run's default instruction (empty if the template puts the query first or there is none)."""
    if not instruction or not template.endswith("{query}"):
        return ""
    return template[: -len("{query}")].format(instruction=instruction)


def _stage_summaries(lineage: dict, infos: list[dict]) -> list[dict]:
    """Each stage's run_info plus its steps and recipe file name, for the model card."""
    out = []
    for final, info in zip(_stage_finals(lineage), infos):
        summary = dict(info)
        metrics = os.path.join(os.path.dirname(final), "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as fh:
                lines = [l for l in fh if l.strip()]
            if lines:
                summary["steps"] = json.loads(lines[-1]).get("step")
        recipe = os.path.join(final, "recipe.yaml")
        if os.path.exists(recipe):
            r = _recipe(final)
            summary["recipe"] = (f"lr {r['optim']['lr']:g}, {r['train']['micro_batch']} per rank"
                                 f" x {r['train'].get('grad_accum', 1)} accumulated")
        out.append(summary)
    return out


def _write_json(path: str, obj) -> None:
    with open(path, "w") as fh:
        jsonio.dump(obj, fh, indent=2)


def export(run_dir: str, output: str, dtype: str = "auto", max_length: Optional[int] = None,
           adapter_only: bool = False, eval_files: tuple[str, ...] = (), name: Optional[str] = None) -> str:
    """Write OUTPUT: a complete sentence-transformers model (merged weights, or ``adapter_only``: each
    stage's adapter to apply to the base by name), its llm2comp config, prompts and model card."""
    from peft import PeftModel
    from safetensors.torch import save_file

    from data_prep import __version__ as version
    from . import model_card
    from ..modeling.build import model_tokenizer
    from ..modeling.loading import load_causal_lm
    from ..modeling.settings import ModelSettings

    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output}: is a file, not a folder to write the export into")
    if os.path.isdir(output) and os.listdir(output) and not os.path.exists(os.path.join(output, CONFIG)):
        # an earlier export is replaced whole; any other folder's files are not ours to delete
        raise UserError(f"--output {output}: not empty and not an llm2comp export; name a new or empty folder")
    for path in eval_files:  # before any work: a bad file must not stop the export halfway
        model_card.read_eval(path)
    lineage, memory = read_run(run_dir, "--run")
    final = run_dir if os.path.exists(os.path.join(run_dir, "lineage.json")) else os.path.join(run_dir, FINAL)
    with open(os.path.join(final, "tokenizer_identity.json")) as fh:
        identity = json.load(fh)
    recipe = _recipe(final)
    infos = [read_run_info(f) for f in _stage_finals(lineage)]
    base = lineage["base"]
    base_name = _base_name(base)
    model_dtype = recipe["model"]["dtype"] if dtype == "auto" else dtype
    tok, _ = model_tokenizer(ModelSettings(path=base["path"], tokenizer=recipe["model"].get("tokenizer") or base["path"]))
    final_output, output = output, _staging(output)
    try:
        pooling = recipe["model"].get("pooling", "memory")
        adapters = []
        deltas = list(lineage.get("embedding_deltas", []))
        if adapter_only:
            for i, (adapter, info) in enumerate(zip(lineage["adapters"], infos)):
                rel = os.path.join("adapters", f"{i}-{info.get('stage', 'stage')}")
                shutil.copytree(adapter, os.path.join(output, rel), dirs_exist_ok=True)
                cfg_path = os.path.join(output, rel, "adapter_config.json")
                with open(cfg_path) as fh:
                    adapter_cfg = json.load(fh)
                adapter_cfg["base_model_name_or_path"] = base.get("name") or base_name  # not the training machine's path
                _write_json(cfg_path, adapter_cfg)
                adapters.append(rel)
            for i, delta in enumerate(deltas):
                rel = os.path.join("adapters", f"embedding_delta-{i}.safetensors")
                shutil.copyfile(delta, os.path.join(output, rel))
                deltas[i] = rel
            hidden = memory.shape[1] if memory is not None else None
            from ..modeling.loading import load_config

            hidden = hidden or load_config(base["path"], base["config_overrides"]).get_text_config().hidden_size
            weights_dtype = {"float32": "float32", "bfloat16": "bfloat16"}.get(model_dtype, "float32")
        else:
            model, _ = load_causal_lm(base["path"], model_dtype, "auto", base["random_init"], base["config_overrides"], base["seed"])
            for adapter in lineage["adapters"]:
                model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            if deltas:  # E's trained input embeddings, folded in as every later stage saw them
                from ..modeling.embedding_delta import fold_delta

                for delta in deltas:
                    fold_delta(model.get_input_embeddings(), delta)
            model.config._name_or_path = base_name  # not the training machine's folder
            model.save_pretrained(output, safe_serialization=True)
            hidden = model.config.get_text_config().hidden_size
            weights_dtype = str(model.dtype).replace("torch.", "")
        tok.name_or_path = base_name
        tok.save_pretrained(output)
        if pooling == "memory":
            import torch

            save_file({"memory": memory.to(getattr(torch, weights_dtype)).contiguous()}, os.path.join(output, "memory.safetensors"))
        trained_attention = (infos[-1].get("effective") or {}).get("attention_implementation") if infos else None
        if isinstance(trained_attention, str) and trained_attention.startswith(ROW_DROPOUT):
            trained_attention = trained_attention[len(ROW_DROPOUT) + 1:]  # the wrapped implementation
        text = text_settings(infos, max_length)
        pairs = [i["data"] for i in infos if i.get("data", {}).get("kind") == "pairs"]
        prompts = {"query": query_prompt(text["instruction_template"], pairs[-1].get("instruction", "") if pairs else ""),
                   "document": ""}
        config = {
            "format_version": FORMAT_VERSION,
            "memory_tokens": int(memory.shape[0]) if pooling == "memory" else 0,
            "pooling": pooling,
            # The first token training used (model.first_token); runs from before the setting used the tokenizer's.
            "prefix_ids": lineage.get("prefix_ids", identity["prefix_ids"]),
            "pad_id": tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0),
            **text,
            "trained_attention": trained_attention,
            "tokenizer_hash": identity["hash"],
            "lineage": public_lineage(lineage, infos),
        }
        if adapter_only:
            config.update(adapter_only=True, adapters=adapters, embedding_deltas=deltas, weights_dtype=weights_dtype,
                          base_model={"name": base.get("name") or base_name, "random_init": base["random_init"],
                                      "config_overrides": base["config_overrides"], "seed": base["seed"]})
        _write_json(os.path.join(output, CONFIG), config)
        # sentence-transformers loads the directory through this module (llm2comp must be installed).
        _write_json(os.path.join(output, "modules.json"),
                    [{"idx": 0, "name": "0", "path": "", "type": "trainer.serving.st_module.LLM2CompModule"}])
        _write_json(os.path.join(output, ST_CONFIG), _st_config(prompts))
        _write_json(os.path.join(output, "sentence_bert_config.json"),
                    {"max_seq_length": text["max_length"], "do_lower_case": False})
        with open(os.path.join(output, "README.md"), "w") as fh:
            fh.write(model_card.render(name=name or os.path.basename(os.path.normpath(final_output)), base=base_name,
                                       license=model_card.base_license(base["path"], base.get("name") or base_name),
                                       config={**config, "dimension": int(hidden), "prompts": prompts},
                                       stages=_stage_summaries(lineage, infos), eval_files=list(eval_files),
                                       version=version))
        _publish(output, final_output)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)  # the staging folder: nothing half-written is left
        raise
    return final_output


def _staging(output: str) -> str:
    """A fresh folder beside ``output`` that the export is written into, and renamed from once complete, so
    that an export stopped halfway leaves no folder that looks like a model."""
    parent = os.path.dirname(os.path.abspath(output)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output {output}: cannot create its folder {parent} ({e.strerror or e})") from None
    staging = os.path.join(parent, f".{os.path.basename(os.path.normpath(output))}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def _publish(staging: str, output: str) -> None:
    """Replace ``output`` (an earlier export, if any) with the complete staging folder."""
    if os.path.isdir(output):
        old = f"{staging}.old"
        os.replace(output, old)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


def _st_config(prompts: dict) -> dict:
    import torch
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return {"model_type": "SentenceTransformer", "__version__": versions, "prompts": prompts,
            "default_prompt_name": None, "similarity_fn_name": "cosine"}


def size_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20


def _recipe(final: str) -> dict:
    import yaml

    path = os.path.join(final, "recipe.yaml")
    if not os.path.exists(path):
        raise UserError(f"{final}: no recipe.yaml; not a finished llm2comp run")
    with open(path) as fh:
        return yaml.safe_load(fh)


def run(args) -> int:
    out = export(args.run, args.output, args.dtype, args.max_length, args.adapter_only, tuple(args.eval or ()),
                 args.name)
    kind = "adapters on " + json.load(open(os.path.join(out, CONFIG)))["base_model"]["name"] if args.adapter_only \
        else "merged weights"
    print(f"{out} ({kind}, {size_mb(out):,.1f} MB)")
    return 0
