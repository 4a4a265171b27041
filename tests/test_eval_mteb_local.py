"""`eval mteb --data-dir`: task data from local folders the tests write themselves (one classification task, two
STS tasks, one of them a multilingual task's subset). The same data scores the same read from a folder as from
the datasets cache; summary.json says where each task's data came from, averages the tasks that ran and says
how many of the benchmark's it covers; each distinct text is encoded once per task, longest first, and
classification encodes only MTEB's own training subsample, with the scores unchanged; the benchmark lists resolve
in mteb's registry; bad folders fail in one line."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from conftest import ROOT, assert_one_line_error, env_with_root, failing_cli_cases, make_docs, write_jsonl
from mteb_cache import prefill

BANKING = ("mteb/banking77", "0fd18e25b25c072e09e0d92ab615fda904d66300")
STSB = ("mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831")


def offline_env(hf_home):
    env = env_with_root()
    env.update(HF_HOME=str(hf_home), HF_DATASETS_CACHE=str(hf_home / "datasets"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", MTEB_CACHE=str(hf_home / "mteb"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    env.pop("LLM2COMP_MTEB_DATA", None)
    return env


def llm2comp(env, *args):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def classification_rows(seed: int, per_label: int) -> list[dict]:
    texts = [d["text"] for d in make_docs(3 * per_label, seed=seed, lengths=(3, 6, 11))]
    return [{"text": t, "label": i % 3, "label_text": f"intent{i % 3}"} for i, t in enumerate(texts)]


def sts_rows(seed: int, n: int) -> list[dict]:
    """Pairs whose sentences repeat (as SICK-R's do), with scores 0-5."""
    texts = [d["text"] for d in make_docs(n, seed=seed, lengths=(2, 5, 9, 14))]
    return [{"sentence1": texts[i], "sentence2": texts[(i * 7 + 3) % n] if i % 3 else texts[(i + 1) % n],
             "score": float((i * 5) % 6)} for i in range(n)]


@pytest.fixture(scope="module")
def tasks_data(tmp_path_factory):
    """DIR/<Task>[-<subset>]/<split>.jsonl, and the same Banking77 and STS-B data in a datasets cache."""
    d = tmp_path_factory.mktemp("mteb_local")
    train, test, sts = classification_rows(71, 100), classification_rows(72, 8), sts_rows(73, 30)
    write_jsonl(d / "local" / "Banking77Classification" / "train.jsonl", train)
    write_jsonl(d / "local" / "Banking77Classification" / "test.jsonl", test)
    write_jsonl(d / "local" / "STSBenchmark" / "test.jsonl", sts)
    write_jsonl(d / "local" / "STS17-en-en" / "test.jsonl", sts_rows(74, 16))
    columns = lambda rows: {k: [r[k] for r in rows] for k in rows[0]}  # noqa: E731
    prefill(d / "hf" / "datasets", *BANKING, {"train": columns(train), "test": columns(test)})
    prefill(d / "hf" / "datasets", *STSB, {"test": columns(sts)})
    return d


@pytest.fixture(scope="module")
def plain_lm(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer: a plain causal LM, scored with --pooling."""
    from tiny_models import tiny_causal_lm
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("plain_lm")
    tiny_causal_lm("llama", vocab_size=49152).save_pretrained(d)
    AutoTokenizer.from_pretrained(smollm2_tokenizer).save_pretrained(d)
    return d


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_local_folders_score_as_the_cached_copy_and_record_their_source_compiled_or_not(tasks_data, plain_lm, tmp_path):
    env = offline_env(tasks_data / "hf")
    args = ["eval", "mteb", "--model", plain_lm, "--pooling", "mean", "--tasks", "Banking77Classification,STSBenchmark",
            "--no-progress"]
    r = llm2comp(env, *args, "--data-dir", tasks_data / "local", "--output", tmp_path / "local")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    env_dir = dict(env, LLM2COMP_MTEB_DATA=str(tasks_data / "local"))  # the cluster's way: the environment
    r = llm2comp(env_dir, *args, "--output", tmp_path / "env")
    assert r.returncode == 0, r.stderr[-3000:]
    r = llm2comp(env, *args, "--output", tmp_path / "cache")  # no folder: the datasets cache, as before
    assert r.returncode == 0, r.stderr[-3000:]
    local, via_env, cached = summary(tmp_path / "local"), summary(tmp_path / "env"), summary(tmp_path / "cache")
    for name in ("Banking77Classification", "STSBenchmark"):
        assert local["results"][name]["splits"] == cached["results"][name]["splits"] == via_env["results"][name]["splits"]
        assert local["results"][name]["main_score"] == cached["results"][name]["main_score"]
    per_exp = [json.loads((tmp_path / d / "Banking77Classification.json").read_text())["scores"]["test"][0]
               ["scores_per_experiment"] for d in ("local", "cache")]
    assert per_exp[0] == per_exp[1] and len(per_exp[0]) == 10  # MTEB's protocol: ten classifiers, each the same

    src = local["results"]["Banking77Classification"]["data"]
    assert src["source"] == "local" and src["subsets"]["default"]["path"] == str(tasks_data / "local" / "Banking77Classification")
    assert src["subsets"]["default"]["splits"]["train"]["rows"] == 300 and len(src["subsets"]["default"]["splits"]["test"]["sha256"]) == 64
    assert cached["results"]["STSBenchmark"]["data"] == {"source": "hub", "dataset": STSB[0], "revision": STSB[1],
                                                         "subsets": ["default"]}
    both = (local["results"]["Banking77Classification"]["main_score"] + local["results"]["STSBenchmark"]["main_score"]) / 2
    lists = local["aggregate"].pop("lists")
    assert local["aggregate"] == {"benchmark": None, "tasks_planned": 2, "tasks_run": 2, "average": pytest.approx(both)}
    # both tasks are in every llm2comp list: each list's average over the tasks of it that ran
    assert {n: (g["tasks"], g["tasks_run"]) for n, g in lists.items()} == {
        "llm2comp-paper": (14, 2), "llm2comp-offline": (8, 2), "llm2comp-offline6": (6, 2)}
    assert all(g["average"] == pytest.approx(both) for g in lists.values())
    assert "average" in r.stdout and "over 2 of the 2 tasks requested" in r.stdout
    assert local["compiled_blocks"] == [0, 2]  # read back: eager

    # --compile: every block compiled (read back from the model into summary.json), the same scores as eager
    r = llm2comp(env, *args, "--data-dir", tasks_data / "local", "--output", tmp_path / "compiled", "--compile")
    assert r.returncode == 0, r.stderr[-3000:]
    compiled = summary(tmp_path / "compiled")
    assert compiled["compiled_blocks"] == [2, 2]
    for name in ("Banking77Classification", "STSBenchmark"):
        assert compiled["results"][name]["main_score"] == pytest.approx(local["results"][name]["main_score"], abs=1e-3)


def test_paper_benchmark_offline_runs_what_it_has_and_says_what_it_covers(tasks_data, plain_lm, tmp_path):
    hf = tmp_path / "empty-hf"  # no cached copy of anything: only the local folders can be scored
    r = llm2comp(offline_env(hf), "eval", "mteb", "--model", plain_lm, "--pooling", "last", "--benchmark",
                 "llm2comp-paper", "--data-dir", tasks_data / "local", "--output", tmp_path / "out", "--no-progress")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    s = summary(tmp_path / "out")
    assert sorted(s["results"]) == ["Banking77Classification", "STS17", "STSBenchmark"]
    skipped = [line for line in r.stdout.splitlines() if ": not evaluated, its data could not be loaded" in line]
    assert len(skipped) == 11 and any(line.startswith("SciDocsRR:") for line in skipped)
    sts17 = s["results"]["STS17"]
    assert list(sts17["data"]["subsets"]) == ["en-en"] and list(sts17["splits"]["test"]) == ["en-en"]
    mean = sum(v["main_score"] for v in s["results"].values()) / 3
    lists = s["aggregate"].pop("lists")
    assert s["aggregate"] == {"benchmark": "llm2comp-paper", "tasks_planned": 14, "tasks_run": 3,
                              "average": pytest.approx(mean)}
    assert f"average {mean:.2f} over 3 of the 14 tasks of llm2comp-paper" in r.stdout
    # STS17 and STSBenchmark are offline6's too, Banking77 as well: all three; STS17's en-en counts as the task
    assert lists["llm2comp-offline6"]["tasks_run"] == 3 and "llm2comp-offline6: 3 of its 6 tasks ran" in r.stdout
    assert s["pooling"] == "last" and "instructions" not in s  # a plain LM gets no instruction


def test_benchmark_lists_resolve_in_mtebs_registry():
    from trainer.serving.evaluation.mteb_benchmarks import BENCHMARKS, benchmark_tasks

    paper = benchmark_tasks("llm2comp-paper")
    assert len({t.metadata.name for t in paper}) == 14 == len(BENCHMARKS["llm2comp-paper"])
    # the paper's six categories: 2 classification, 3 clustering, 3 retrieval, 3 STS, 1 pair classification, 2 reranking
    assert Counter(t.metadata.type for t in paper) == {"Classification": 2, "Clustering": 3, "Retrieval": 3, "STS": 3,
                                                       "PairClassification": 1, "Reranking": 2}
    assert all(t.eval_splits == ["test"] and not t.metadata.name.endswith(".v2") for t in paper)
    offline = {t.metadata.name: t for t in benchmark_tasks("llm2comp-offline")}
    folders = {n + ("" if offline[n].hf_subsets == ["default"] else "-" + "-".join(offline[n].hf_subsets)) for n in offline}
    assert folders == {"Banking77Classification", "EmotionClassification", "AmazonCounterfactualClassification-en",
                       "STS17-en-en", "SICK-R", "STSBenchmark", "SciFact", "NFCorpus"}  # the shared data's folder names
    assert len(set(offline) & set(BENCHMARKS["llm2comp-paper"])) == 7
    assert Counter(t.metadata.type for t in offline.values())["Retrieval"] == 2
    # the six-task set every earlier result was scored on keeps a name of its own
    six = {t.metadata.name for t in benchmark_tasks("llm2comp-offline6")}
    assert six == set(offline) - {"SciFact", "NFCorpus"} and all(offline[n].metadata.type != "Retrieval" for n in six)


def test_each_distinct_text_is_encoded_once_per_task_longest_first_with_the_scores_unchanged(tasks_data):
    import mteb
    import numpy as np

    from trainer.serving.evaluation.mteb_dedup import make_dedup
    from trainer.serving.evaluation.mteb_local import load_local
    from trainer.serving.evaluation.mteb_model import make_text_model

    calls = []

    def encode(texts, instruction, batch_size):
        calls.append(list(texts))
        return np.stack([np.random.default_rng(sum(map(ord, t)) + len(t)).normal(size=8) for t in texts])

    def scores(model):
        out = {}
        for name in ("Banking77Classification", "STSBenchmark"):
            task = mteb.get_task(name)
            load_local(task, {"default": str(tasks_data / "local" / name)})
            tr = mteb.evaluate(model, [task], cache=None, show_progress_bar=False).task_results[0]
            out[name] = tr.scores
        return out

    plain = scores(make_text_model(encode, "stub", 8, "x", None, 16))
    asked = [t for c in calls for t in c]
    calls.clear()
    model = make_dedup(make_text_model(encode, "stub", 8, "x", None, 16))
    assert scores(model) == plain
    encoded = [t for c in calls for t in c]
    train = [r["text"] for r in map(json.loads, (tasks_data / "local" / "Banking77Classification" / "train.jsonl").open())]
    sts = [s for r in map(json.loads, (tasks_data / "local" / "STSBenchmark" / "test.jsonl").open())
           for s in (r["sentence1"], r["sentence2"])]
    assert len(encoded) == len(set(encoded)) < len(asked)  # once each (these tasks share no text)
    assert set(encoded) == set(asked) and len(set(sts)) < len(sts)  # every text asked for, each once
    assert all(len(a) >= len(b) for c in calls for a, b in zip(c, c[1:]))  # longest first in every call
    stats = model.stats
    assert stats["STSBenchmark"] == {"texts": len(sts), "encoded": len(set(sts)), "encode_s": pytest.approx(
        stats["STSBenchmark"]["encode_s"])}
    # classification encodes MTEB's own training subsample (10 experiments x 8 per label, their union), not all 300
    train_encoded = set(encoded) & set(train)
    assert 24 <= len(train_encoded) <= 240 < len(train)
    assert stats["Banking77Classification"]["encoded"] == len(train_encoded) + 24


def test_bad_local_folders_fail_in_one_line(tmp_path, tasks_data, plain_lm):
    (tmp_path / "d" / "Banking77Classification").mkdir(parents=True)
    write_jsonl(tmp_path / "d" / "Banking77Classification" / "test.jsonl", classification_rows(1, 2))
    write_jsonl(tmp_path / "e" / "STSBenchmark" / "test.jsonl", [{"sentence1": "a", "sentence2": "b"}])
    write_jsonl(tmp_path / "f" / "SciFact" / "test.jsonl", [{"text": "a"}])
    (tmp_path / "g" / "STSBenchmark").mkdir(parents=True)
    (tmp_path / "g" / "STSBenchmark" / "test.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n' * 2
                                                                 + "{not json\n")  # its third line
    base = ["eval", "mteb", "--model", plain_lm, "--pooling", "mean", "--output", tmp_path / "out"]
    cases = [
        [*base, "--tasks", "STSBenchmark", "--data-dir", tmp_path / "nowhere"],
        [*base, "--tasks", "Banking77Classification", "--data-dir", tmp_path / "d"],
        [*base, "--tasks", "STSBenchmark", "--data-dir", tmp_path / "e"],
        [*base, "--tasks", "SciFact", "--data-dir", tmp_path / "f"],
        [*base, "--tasks", "STSBenchmark", "--data-dir", tmp_path / "g"],
        ["eval", "mteb", "--model", tasks_data, "--pooling", "mean", "--tasks", "STSBenchmark", "--data-dir",
         tasks_data / "local", "--output", tmp_path / "o"],
    ]
    env = offline_env(tmp_path / "hf")
    results = failing_cli_cases(tmp_path, cases, env=env)
    assert_one_line_error(results[0], ["--data-dir", "nowhere: no such folder"])
    assert_one_line_error(results[1], ["Banking77Classification: no train.jsonl", "reads the splits test, train"])
    assert_one_line_error(results[2], ["STSBenchmark: no column score", "reads score, sentence1, sentence2"])
    assert_one_line_error(results[3], ["SciFact/corpus.jsonl: no such file"])  # a retrieval folder is BEIR's layout
    assert_one_line_error(results[4], [f"{tmp_path / 'g' / 'STSBenchmark' / 'test.jsonl'}:3: not valid JSON"])
    assert_one_line_error(results[5], ["neither an llm2comp export"])
    r = failing_cli_cases(tmp_path, [cases[0][:-2]], env=dict(env, LLM2COMP_MTEB_DATA=str(tmp_path / "gone")))
    assert_one_line_error(r[0], ["$LLM2COMP_MTEB_DATA", "gone: no such folder"])
