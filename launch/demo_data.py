"""The demo's small real sample: from the shared data set when present, else from public hub datasets.

    python launch/demo_data.py DATA OUT STS_PAIRS     (STS_PAIRS: all, or a number of STS-B test pairs)

Writes OUT/samples/{paragraphs.jsonl, sentences.txt, pairs.jsonl}, OUT/sts/stsbenchmark/sts-test.csv and
OUT/samples/sts_selection.txt (one line: which test pairs) and prints where they came from. Exit 2 with one line of advice when neither source is available.
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import shutil
import socket
import sys
from typing import Callable, Optional

PARAGRAPHS, SENTENCES = 2000, 5000
HUB_WIKI = ("Salesforce/wikitext", "wikitext-103-raw-v1")
HUB_STSB = "sentence-transformers/stsb"


def shared_available(data: str) -> bool:
    return all(os.path.exists(os.path.join(data, p)) for p in (
        "corpus/wiki_paragraphs.valid.jsonl.gz", "corpus/wiki_sentences.txt.gz", "nli/snli_triplets.jsonl",
        "sts/stsbenchmark/sts-test.csv"))


def _head(src: str, dst: str, n: int) -> None:
    opener = gzip.open if src.endswith(".gz") else open
    with opener(src, "rb") as s, open(dst, "wb") as d:
        d.writelines(itertools.islice(s, n))


def sts_sample(lines: list[str], n: int) -> list[str]:
    """A fixed sample of ``n`` STS-B pairs in the whole file's proportions: stratified by source set (each of
    the three genres has two or more: MSRvid, images and track5 are captions, answer-answer forums, MSRpar
    and headlines news) and by gold score (bins [0,1) .. [4,5]). Each stratum gets its share of ``n`` (largest
    remainders, every non-empty stratum at least one pair when ``n`` allows), taken evenly spaced through the
    stratum in file order. No randomness: the same file and ``n`` always give the same pairs, in file order.
    ``n`` >= the file's size: every pair."""
    if n >= len(lines):
        return list(lines)
    strata: dict[tuple[str, str, int], list[int]] = {}
    for i, line in enumerate(lines):
        cols = line.rstrip("\n").split("\t")
        strata.setdefault((cols[0], cols[1], min(int(float(cols[4])), 4)), []).append(i)
    keys = sorted(strata)
    exact = {k: n * len(strata[k]) / len(lines) for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    if n >= len(keys):  # every stratum is represented
        for k in keys:
            quota[k] = max(quota[k], 1)
    for k in sorted(keys, key=lambda k: (quota[k] - exact[k], k)):  # the largest remainders first
        if sum(quota.values()) >= n:
            break
        if quota[k] < len(strata[k]):
            quota[k] += 1
    while sum(quota.values()) > n:  # the minimum of one overshot n: take back from the largest strata
        k = max(keys, key=lambda k: (quota[k], k))
        quota[k] -= 1
    chosen = [strata[k][int((j + 0.5) * len(strata[k]) / quota[k])] for k in keys for j in range(quota[k])]
    return [lines[i] for i in sorted(chosen)]


def from_shared(data: str, out: str, sts_pairs: Optional[int]) -> None:
    # Held-out paragraphs (valid split): the demo never trains on what the reproduction trains on.
    _head(f"{data}/corpus/wiki_paragraphs.valid.jsonl.gz", f"{out}/samples/paragraphs.jsonl", PARAGRAPHS)
    _head(f"{data}/corpus/wiki_sentences.txt.gz", f"{out}/samples/sentences.txt", SENTENCES)
    shutil.copy(f"{data}/nli/snli_triplets.jsonl", f"{out}/samples/pairs.jsonl")
    with open(f"{data}/sts/stsbenchmark/sts-test.csv", encoding="utf-8") as fh:
        lines = fh.readlines()
    chosen = lines if sts_pairs is None else sts_sample(lines, sts_pairs)
    with open(f"{out}/sts/stsbenchmark/sts-test.csv", "w", encoding="utf-8") as fh:
        fh.writelines(chosen)
    _describe(out, f"all {len(lines):,} pairs" if len(chosen) == len(lines) else
              f"{len(chosen):,} of the {len(lines):,} pairs, a fixed sample stratified by source set and gold score")


def _describe(out: str, what: str) -> None:
    """One line naming the STS-B pairs scored, for the demo's table."""
    with open(f"{out}/samples/sts_selection.txt", "w", encoding="utf-8") as fh:
        fh.write(what + "\n")


def from_hub(out: str, sts_pairs: Optional[int], load_dataset: Callable) -> None:
    """wikitext-103 paragraphs and sentences; STS-B train pairs scored >= 4 of 5 as (query, positive) with a
    random other sentence as the negative; STS-B test in the SentEval csv layout."""
    wiki = [t.strip() for t in load_dataset(*HUB_WIKI, split="train[:1%]")["text"]]
    stsb = load_dataset(HUB_STSB)
    paras = [t for t in wiki if len(t) > 400 and not t.startswith("=")][:PARAGRAPHS]
    if not paras:
        raise ValueError(f"{HUB_WIKI[0]}: no paragraph of more than 400 characters in the first 1% of train")
    with open(f"{out}/samples/paragraphs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(paras))
    sents = [s.strip().rstrip(".") + "." for t in paras for s in t.split(". ") if 6 <= len(s.split()) <= 60][:SENTENCES]
    with open(f"{out}/samples/sentences.txt", "w") as f:
        f.write("\n".join(sents) + "\n")
    close = [r for r in stsb["train"] if r["score"] >= 0.8]  # the hub's scores are normalised to [0, 1]
    rng = random.Random(0)
    with open(f"{out}/samples/pairs.jsonl", "w") as f:
        for r in close:
            f.write(json.dumps({"query": r["sentence1"], "positive": r["sentence2"],
                                "negative": rng.choice(close)["sentence2"], "source": "stsb"}) + "\n")
    with open(f"{out}/sts/stsbenchmark/sts-test.csv", "w") as f:
        for i, r in enumerate(itertools.islice(stsb["test"], sts_pairs)):
            s1, s2 = (r[k].replace("\t", " ").replace("\n", " ") for k in ("sentence1", "sentence2"))
            f.write(f"hub\tstsb\t-\t{i}\t{r['score'] * 5:.3f}\t{s1}\t{s2}\n")
    total = len(stsb["test"])
    _describe(out, f"all {total:,} pairs" if sts_pairs is None or sts_pairs >= total else
              f"the first {sts_pairs:,} of the {total:,} pairs")


def hub_reachable(timeout: float = 5.0) -> None:
    """Raise OSError at once when the hub's host cannot be reached (instead of the hub client's retries)."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise OSError("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set")
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()


def main(argv: list[str]) -> int:
    data, out = argv[0], argv[1]
    if argv[2] != "all" and not argv[2].isdigit():
        print(f"demo: DEMO_STS_PAIRS={argv[2]!r}: expected 'all' or a number of pairs", file=sys.stderr)
        return 2
    sts_pairs = None if argv[2] == "all" else int(argv[2])
    os.makedirs(f"{out}/samples", exist_ok=True)
    os.makedirs(f"{out}/sts/stsbenchmark", exist_ok=True)
    if shared_available(data):
        from_shared(data, out, sts_pairs)
        print(f"demo: data from {data} (Wikipedia paragraphs and sentences, SNLI, STS Benchmark)")
        return 0
    print(f"demo: {data} not found; trying the public hub datasets ({HUB_WIKI[0]}, {HUB_STSB})...", flush=True)
    try:
        hub_reachable()
        from datasets import load_dataset

        from_hub(out, sts_pairs, load_dataset)
    except Exception as e:  # no network, hub down, dataset moved: one line, then what to do
        print(f"demo: the hub datasets are unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})\n"
              f"demo: no data. Neither {data} (the project's shared data set) nor the Hugging Face hub is reachable.\n"
              "      Put the shared data set there, or run: make demo DATA=/path/to/data (same layout), "
              "or allow hub access.", file=sys.stderr)
        return 2
    print(f"demo: data from the Hugging Face hub ({HUB_WIKI[0]} {HUB_WIKI[1]}, {HUB_STSB})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
