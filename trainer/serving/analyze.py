"""``llm2comp analyze --model M --input FILE --output DIR``: the dimensional-collapse analysis of an encoder.

- singular value spectrum of the (L2-normalised, centred) embeddings, as log values and a PNG plot;
- effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised singular values;
- uniformity (Wang & Isola 2020): log E exp(-2 ||f(x) - f(y)||^2) over all pairs of distinct texts;
- alignment (Wang & Isola 2020): E ||f(x) - f(y)||^2 over positive pairs, when the input has pairs
  (``.txt`` lines ``text<TAB>paired text``, or ``.jsonl`` records with ``query`` and ``positive``).
"""
from __future__ import annotations

import json
import os

import numpy as np

from data_prep import jsonio
from data_prep.errors import UserError


def read_input(path: str, text_field: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Texts and index pairs of positives (empty when the input has no pairs)."""
    texts, pairs = [], []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [l.rstrip("\n") for l in fh if l.strip()]
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        if path.endswith(".jsonl"):
            try:
                obj = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{n}: not valid JSON") from None
            if isinstance(obj, dict) and isinstance(obj.get("query"), str) and isinstance(obj.get("positive"), str):
                pairs.append((len(texts), len(texts) + 1))
                texts += [obj["query"], obj["positive"]]
            elif isinstance(obj, dict) and isinstance(obj.get(text_field), str):
                texts.append(obj[text_field])
            else:
                raise UserError(f"{path}:{n}: needs a {text_field!r} string or query/positive strings")
        elif "\t" in line:
            a, b = line.split("\t")[:2]
            pairs.append((len(texts), len(texts) + 1))
            texts += [a, b]
        else:
            texts.append(line)
    if len(texts) < 2:
        raise UserError(f"{path}: needs at least two texts")
    return texts, pairs


def analyze(embeddings: np.ndarray, pairs: list[tuple[int, int]]) -> dict:
    z = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / s.sum()
    erank = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    sq = (z * z).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0, None)
    off = ~np.eye(len(z), dtype=bool)
    uniformity = float(np.log(np.exp(-2 * d2[off]).mean()))
    alignment = float(np.mean([((z[i] - z[j]) ** 2).sum() for i, j in pairs])) if pairs else None
    return {"n": int(len(z)), "dim": int(z.shape[1]), "effective_rank": erank, "uniformity": uniformity,
            "alignment": alignment, "singular_values": s.tolist()}


def plot(report: dict, path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the plot needs matplotlib: pip install 'llm2comp[plot]'") from None
    s = np.asarray(report["singular_values"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, len(s) + 1), np.log10(np.clip(s, 1e-12, None)))
    ax.set_xlabel("singular value rank")
    ax.set_ylabel("log10 singular value")
    ax.set_title(f"{title}\neffective rank {report['effective_rank']:.1f} of {report['dim']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    from .evaluation.models import load_encoder

    texts, pairs = read_input(args.input, args.text_field)
    encode = load_encoder(args.model, args.pooling, args.batch_size, progress=args.progress,
                          first_token=args.first_token)
    report = {"model": args.model, "input": args.input, **analyze(encode(texts), pairs)}
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "analysis.json"), "w") as fh:
        jsonio.dump(report, fh, indent=2)
    plot(report, os.path.join(args.output, "spectrum.png"), os.path.basename(os.path.normpath(args.model)))
    align = f"{report['alignment']:.4f}" if report["alignment"] is not None else "n/a (no pairs)"
    print(f"effective rank {report['effective_rank']:.2f} of {report['dim']}; uniformity {report['uniformity']:.4f}; "
          f"alignment {align}; {args.output}/analysis.json, spectrum.png")
    return 0
