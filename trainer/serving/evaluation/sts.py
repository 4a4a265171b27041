"""STS sets in the SentEval layout, and their score: Spearman x 100 of cosine similarity vs gold."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from data_prep.errors import UserError

YEARS = ("STS12", "STS13", "STS14", "STS15", "STS16")


@dataclass
class StsSet:
    name: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().split("\n")
    except UnicodeDecodeError:
        with open(path, encoding="latin-1") as fh:  # some SemEval files are not UTF-8
            return fh.read().split("\n")


def _senteval_year(directory: str, year: str) -> StsSet:
    """All labeled pairs of a year together ("all" setting); unlabeled pairs (blank gold) are skipped."""
    found = StsSet(year)
    names = sorted(os.listdir(directory))
    inputs = {n[len("STS.input.") : -4] for n in names if n.startswith("STS.input.") and n.endswith(".txt")}
    golds = {n[len("STS.gs.") : -4] for n in names if n.startswith("STS.gs.") and n.endswith(".txt")}
    for name in sorted(inputs ^ golds):
        kind = "input without gold" if name in inputs else "gold without input"
        print(f"warning: {directory}: {name}: {kind}; ignored", file=sys.stderr)
    for name in sorted(inputs & golds):
        pairs = _read_lines(os.path.join(directory, f"STS.input.{name}.txt"))
        gold = _read_lines(os.path.join(directory, f"STS.gs.{name}.txt"))
        for i, (p, g) in enumerate(zip(pairs, gold), 1):
            if not g.strip():
                continue
            parts = p.split("\t")
            if len(parts) < 2:
                raise UserError(f"{directory}/STS.input.{name}.txt:{i}: expected two tab-separated sentences")
            found.pairs.append((parts[0], parts[1]))
            found.gold.append(float(g))
    return found


def _stsb(path: str) -> StsSet:
    found = StsSet("STSBenchmark")
    for i, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 7:
            raise UserError(f"{path}:{i}: expected at least 7 tab-separated columns")
        found.pairs.append((cols[5], cols[6]))
        found.gold.append(float(cols[4]))
    return found


def _sick(directory: str) -> StsSet:
    found = StsSet("SICK-R")
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        header, *rows = [l for l in _read_lines(path) if l.strip()]
        cols = header.split("\t")
        a, b, score = cols.index("sentence_A"), cols.index("sentence_B"), cols.index("relatedness_score")
        for row in rows:
            parts = row.split("\t")
            found.pairs.append((parts[a], parts[b]))
            found.gold.append(float(parts[score]))
    return found


def find_sets(data_dir: str, stsb_split: str = "test") -> list[StsSet]:
    """Every STS set under ``data_dir`` (or ``data_dir`` itself being one)."""
    if not os.path.isdir(data_dir):
        raise UserError(f"--data {data_dir}: no such directory")
    candidates = [data_dir] + [os.path.join(data_dir, d) for d in sorted(os.listdir(data_dir))]
    sets: list[StsSet] = []
    for path in candidates:
        base = os.path.basename(os.path.normpath(path))
        if not os.path.isdir(path):
            continue
        year = next((y for y in YEARS if base.startswith(f"{y}-en-test")), None)
        if year:
            sets.append(_senteval_year(path, year))
        elif os.path.exists(os.path.join(path, f"sts-{stsb_split}.csv")) and not any(s.name == "STSBenchmark" for s in sets):
            sets.append(_stsb(os.path.join(path, f"sts-{stsb_split}.csv")))
        elif any(os.path.exists(os.path.join(path, n)) for n in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt")):
            sets.append(_sick(path))
    sets = [s for s in sets if s.pairs]
    if not sets:
        raise UserError(f"--data {data_dir}: no STS set found (STS12-16-en-test, STSBenchmark/sts-{stsb_split}.csv, SICK)")
    order = {n: i for i, n in enumerate((*YEARS, "STSBenchmark", "SICK-R"))}
    return sorted(sets, key=lambda s: order[s.name])


def spearman_of_cosines(a: np.ndarray, b: np.ndarray, gold) -> float:
    from scipy.stats import spearmanr

    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return float(spearmanr((a * b).sum(1), np.asarray(gold)).statistic * 100)


def evaluate(encode, sets: list[StsSet], model_name: str) -> dict:
    """``encode(list[str]) -> np.ndarray``; each distinct sentence is encoded once."""
    sentences = sorted({s for st in sets for p in st.pairs for s in p})
    index = {s: i for i, s in enumerate(sentences)}
    emb = np.asarray(encode(sentences), dtype=np.float32)
    results = {}
    for st in sets:
        a = emb[[index[p[0]] for p in st.pairs]]
        b = emb[[index[p[1]] for p in st.pairs]]
        results[st.name] = {"spearman": spearman_of_cosines(a, b, st.gold), "n": len(st.pairs)}
    return {"model": model_name, "results": results,
            "average": float(np.mean([r["spearman"] for r in results.values()]))}


def markdown(report: dict) -> str:
    lines = ["| set | n | Spearman ×100 |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['n']:,} | {v['spearman']:.2f} |" for k, v in report["results"].items()]
    lines.append(f"| **average** | | **{report['average']:.2f}** |")
    return "\n".join(lines)
