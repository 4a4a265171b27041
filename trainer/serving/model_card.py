"""The export's ``README.md``: a Hugging Face model card for the sentence-transformers model it is."""
from __future__ import annotations

import os
from typing import Optional


def base_license(base_path: Optional[str], name: str) -> str:
    """The base model's licence: the model store's, or the ``license:`` of the base folder's model card."""
    from ..model_store import MODELS

    if name in MODELS and getattr(MODELS[name], "license", None):
        return MODELS[name].license
    card = os.path.join(base_path or "", "README.md")
    if base_path and os.path.exists(card):
        with open(card, encoding="utf-8", errors="replace") as fh:
            text = fh.read(4000)
        if text.startswith("---"):
            for line in text.split("---", 2)[1].splitlines():
                if line.strip().startswith("license:"):
                    return line.split(":", 1)[1].strip().strip("'\"")
    return "other"


def read_eval(path: str) -> dict:
    """An ``llm2comp eval`` results file, or a one-line error naming it (export checks them before writing)."""
    from data_prep import jsonio
    from data_prep.errors import UserError

    report = jsonio.read(path, "--eval")
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict):
        raise UserError(f"--eval {path}: not an `llm2comp eval` results file (no \"results\" object)")
    return report


def _scores(eval_files: list[str]) -> list[str]:
    lines = []
    for path in eval_files:
        report = read_eval(path)
        for name, r in (report.get("results") or {}).items():
            score = r.get("spearman", r.get("main_score"))
            if score is not None:
                lines.append(f"| {name} | {score:.2f} | {r.get('n', '')} | {os.path.basename(path)} |")
    return lines


def render(*, name: str, base: str, license: str, config: dict, stages: list[dict], eval_files: list[str],
           version: str) -> str:
    pooling = config["pooling"]
    how = {"memory": f"mean of the final hidden states of K={config['memory_tokens']} memory tokens appended to the text",
           "mean": "mean of the text tokens' final hidden states", "last": "the last text token's final hidden state"}[pooling]
    rows = []
    for s in stages:
        data = s.get("data", {})
        rows.append(f"| {s.get('stage')} | {s.get('objective', '')} | {data.get('kind', '')} | {data.get('rows', '')} | "
                    f"{data.get('max_tokens', '')} | {s.get('steps', '')} | {s.get('recipe', '')} |")
    scores = _scores(eval_files)
    query = config.get("prompts", {}).get("query", "")
    parts = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, sentence-similarity, llm2comp]",
        f"base_model: {base}",
        f"license: {license}",
        "---",
        "",
        f"# {name}",
        "",
        f"A text encoder made from the decoder LLM `{base}` with llm2comp {version}, "
        "the LLM2Comp recipe (\"Learning to Compress: Unlocking the Potential of Large Language Models for Text "
        "Representation\", AAAI 2026): a LoRA-adapted, bidirectional copy of the LLM trained to compress texts, "
        "then contrastively.",
        "",
        f"- Embedding: {how}; dimension {config['dimension']}; cosine similarity.",
        f"- Inputs are cut to {config['max_length']} tokens.",
        f"- Instructions: `{config['instruction_template']}` ({config.get('instruction_template_from', '')})"
        + (f"; the `query` prompt is `{query}`" if query else "") + ".",
        f"- Base model licence: {license} (this model is a derivative of `{base}`).",
        "",
        "## Training",
        "",
        "| stage | objective | data | rows | max tokens | steps | optimizer |",
        "|---|---|---|---:|---:|---:|---|",
        *rows,
        "",
    ]
    if scores:
        parts += ["## Evaluation (as measured by `llm2comp eval`)", "", "| set | score | pairs | from |",
                  "|---|---:|---:|---|", *scores, ""]
    parts += [
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer  # with llm2comp installed (pip install llm2comp)",
        f'model = SentenceTransformer("{name}", trust_remote_code=True)',
        "queries = model.encode([\"what is compression?\"], prompt_name=\"query\")" if query else
        "queries = model.encode([\"what is compression?\"])",
        "documents = model.encode([\"Compression makes data smaller.\"])",
        "print(model.similarity(queries, documents))",
        "",
        "from trainer.serving import Encoder  # llm2comp's own API",
        f'enc = Encoder.from_pretrained("{name}")',
        "emb = enc.encode_query([\"what is compression?\"], instruction=\"Retrieve a passage that answers the question\")",
        "```",
        "",
        "```bash",
        f"llm2comp encode --model {name} --input texts.txt --output embeddings.npy",
        f"llm2comp eval mteb --model {name} --tasks STSBenchmark --output results/",
        "```",
        "",
    ]
    return "\n".join(parts)
