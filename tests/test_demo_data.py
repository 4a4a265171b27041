"""The demo's data: the hub fallback turns hub-shaped datasets into valid prep inputs and STS-B files; with
neither the shared data nor the hub, the demo stops with exit 2 and one piece of advice."""
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA, make_text

spec = importlib.util.spec_from_file_location("demo_data", ROOT / "launch" / "demo_data.py")
demo_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_data)


def fake_hub(calls):
    """``datasets.load_dataset`` stand-in serving wikitext- and stsb-shaped data (their real columns)."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(0)
    wiki = [" = Heading = ", ""] + [" " + make_text(rng, rng.choice([20, 90, 150])) + " " for _ in range(60)]
    sts = lambda n: Dataset.from_dict({"sentence1": [make_text(rng, 8) for _ in range(n)],
                                       "sentence2": [make_text(rng, 9) + "\tx" for _ in range(n)],
                                       "score": [rng.random() for _ in range(n)]})

    def load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        if name == demo_data.HUB_WIKI[0]:
            return Dataset.from_dict({"text": wiki})
        if name == demo_data.HUB_STSB:
            return DatasetDict(train=sts(80), validation=sts(10), test=sts(30))
        raise AssertionError(name)

    return load_dataset


def test_hub_fallback_writes_valid_prep_inputs_and_sts_files(tmp_path, smollm2_tokenizer):
    from trainer.cli import main
    from trainer.serving.evaluation.sts import find_sets

    out = tmp_path / "demo"
    (out / "samples").mkdir(parents=True)
    (out / "sts" / "stsbenchmark").mkdir(parents=True)
    calls = []
    demo_data.from_hub(str(out), 25, fake_hub(calls))
    assert [c[0] for c in calls] == [demo_data.HUB_WIKI[0], demo_data.HUB_STSB]

    paras = [json.loads(l) for l in (out / "samples" / "paragraphs.jsonl").read_text().splitlines()]
    assert paras and all(len(p["text"]) > 400 and not p["text"].startswith("=") for p in paras)
    sents = (out / "samples" / "sentences.txt").read_text().splitlines()
    assert sents and all(s.endswith(".") and not s.endswith("..") for s in sents)
    pairs = [json.loads(l) for l in (out / "samples" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all({"query", "positive", "negative", "source"} <= p.keys() for p in pairs)

    for kind, name, extra in [("compression", "paragraphs.jsonl", []), ("sentences", "sentences.txt", []),
                              ("pairs", "pairs.jsonl", ["--instruction", "Find"])]:
        assert main(["prep", kind, "--input", str(out / "samples" / name), "--tokenizer", smollm2_tokenizer,
                     "--output", str(tmp_path / kind), "--max-tokens", "48", "--workers", "1", "--no-progress",
                     "--strict", *extra]) == 0, kind
    (sts,) = find_sets(str(out / "sts"))
    assert sts.name == "STSBenchmark" and len(sts.gold) == 25
    assert all(b.endswith(" x") for _, b in sts.pairs)  # a tab inside a sentence did not split it
    assert all(0 <= g <= 5 for g in sts.gold)
    assert (out / "samples" / "sts_selection.txt").read_text() == "the first 25 of the 30 pairs\n"
    demo_data.from_hub(str(out), None, fake_hub([]))  # DEMO_STS_PAIRS=all
    assert len((out / "sts" / "stsbenchmark" / "sts-test.csv").read_text().splitlines()) == 30
    assert (out / "samples" / "sts_selection.txt").read_text() == "all 30 pairs\n"


def test_without_shared_data_or_hub_the_demo_data_step_says_what_to_do(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "demo_data.py"), str(tmp_path / "nowhere"),
                        str(tmp_path / "out"), "10"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "the hub datasets are unavailable" in r.stderr
    assert "make demo DATA=" in r.stderr


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"{SHARED_DATA} absent")
def test_shared_data_is_preferred(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "demo_data.py"), str(SHARED_DATA), str(tmp_path), "7"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"data from {SHARED_DATA}" in r.stdout, r.stderr
    assert len((tmp_path / "sts" / "stsbenchmark" / "sts-test.csv").read_text().splitlines()) == 7
    assert len((tmp_path / "samples" / "sentences.txt").read_text().splitlines()) == demo_data.SENTENCES
    assert (tmp_path / "samples" / "sts_selection.txt").read_text() == \
        "7 of the 1,379 pairs, a fixed sample stratified by source set and gold score\n"
    # The demo's default, all, and a number beyond the file both score every pair, and say so.
    for pairs in ("all", "5000"):
        r = subprocess.run([sys.executable, str(ROOT / "launch" / "demo_data.py"), str(SHARED_DATA), str(tmp_path), pairs],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert len((tmp_path / "sts" / "stsbenchmark" / "sts-test.csv").read_text().splitlines()) == 1379
        assert (tmp_path / "samples" / "sts_selection.txt").read_text() == "all 1,379 pairs\n"
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "demo_data.py"), str(SHARED_DATA), str(tmp_path), "most"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "DEMO_STS_PAIRS='most'" in r.stderr and "Traceback" not in r.stderr


def sts_lines(rng: random.Random, counts: dict) -> list[str]:
    """STS-B-shaped lines: (genre, source set) -> pairs, gold scores spread over 0-5, in blocks as the file has."""
    lines = []
    for (genre, source), n in counts.items():
        for i in range(n):
            lines.append(f"{genre}\t{source}\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\ta {i}\tb {i}\n")
    return lines


def test_the_demo_scores_a_fixed_sample_stratified_by_source_and_score():
    """The demo's STS-B sample (DEMO_STS_PAIRS=N) keeps the test set's proportions: every genre and source set,
    every score band, each in proportion; the same pairs every time; DEMO_STS_PAIRS beyond the file's size takes it all."""
    counts = {("main-captions", "MSRvid"): 250, ("main-captions", "images"): 250, ("main-captions", "track5.en-en"): 125,
              ("main-forums", "answer-answer"): 254, ("main-news", "MSRpar"): 250, ("main-news", "headlines"): 250}
    lines = sts_lines(random.Random(3), counts)
    bins = lambda ls: [min(int(float(l.split("\t")[4])), 4) for l in ls]
    for n in (30, 300, 700):
        sample = demo_data.sts_sample(lines, n)
        assert len(sample) == n and len(set(sample)) == n and set(sample) <= set(lines)
        assert sample == demo_data.sts_sample(list(lines), n), "fixed: no randomness"
        assert sample == sorted(sample, key=lines.index), "in file order"
        sources = {l.split("\t")[1] for l in sample}
        assert sources == {s for _, s in counts}, "every source set, so every genre"
        for source, total in ((s, c) for (_, s), c in counts.items()):
            share = sum(l.split("\t")[1] == source for l in sample) / n
            assert abs(share - total / len(lines)) <= 1.5 / n + 6 / n, (n, source, share)
            # Spread through the set (which runs in blocks of years), not its first pairs.
            rows = [i for i, l in enumerate(lines) if l.split("\t")[1] == source]
            picked = [i for i in rows if lines[i] in set(sample)]
            assert picked[-1] > rows[len(rows) // 2], (n, source)
        if n >= 300:  # every score band of every source set
            for (_, source) in counts:
                mine = [l for l in sample if l.split("\t")[1] == source]
                assert set(bins(mine)) == set(bins([l for l in lines if l.split("\t")[1] == source])), (n, source)
    # Not the first pairs (all captions): the rule the demo's table used to follow.
    assert {l.split("\t")[0] for l in demo_data.sts_sample(lines, 300)} == {"main-captions", "main-forums", "main-news"}
    assert demo_data.sts_sample(lines, 5000) == lines


def test_the_demo_sample_of_the_real_test_set(tmp_path):
    real = SHARED_DATA / "sts" / "stsbenchmark" / "sts-test.csv"
    if not real.exists():
        pytest.skip(f"{real} absent (shared data is optional)")
    lines = real.read_text(encoding="utf-8").splitlines(keepends=True)
    sample = demo_data.sts_sample(lines, 300)
    assert len(sample) == 300 and {l.split("\t")[0] for l in sample} == {l.split("\t")[0] for l in lines}
