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
