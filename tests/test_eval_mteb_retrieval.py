"""`eval mteb --data-dir` with retrieval folders in the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv),
on tiny folders the tests write. The folder lands in mteb's own task as mteb's retrieval loader puts a Hub copy
(ids as strings, queries kept where the qrels name them, titles kept); mteb's evaluator scores it with nDCG@10,
equal to the figure computed by hand for a ranking the test builds; the task's instruction reaches the queries
and never the documents; a malformed folder is named in one line with its file and line, and the other tasks are
still scored; --max-length takes effect and is recorded."""
import json
import math

import numpy as np
import pytest

from conftest import assert_one_line_error, failing_cli_cases, write_jsonl
from test_eval_mteb_local import llm2comp, offline_env, plain_lm, sts_rows, summary  # noqa: F401 (fixture)

# Three queries with qrels and one without. Each query's words are a title's words: the loader must keep titles
# (mteb reads a document as title + " " + text). q3's words are also all in d4, which holds one word more of q3's
# than its relevant d3 does, so d3 comes second for q3 under bag-of-words cosine.
CORPUS = [
    {"_id": "007", "title": "apple orchard", "text": "fruit trees in rows"},
    {"_id": "d2", "title": "river delta", "text": "water and silt"},
    {"_id": "d3", "title": "solar panel", "text": "cells on a roof"},
    {"_id": "d4", "title": "solar panel energy", "text": "grid"},
    {"_id": "d5", "title": "", "text": "a document without a title"},
    {"_id": "d6", "title": "mountain goat", "text": "climbing rocks"},
]
QUERIES = [{"_id": "q1", "text": "apple orchard"}, {"_id": "q2", "text": "river delta"},
           {"_id": "q3", "text": "solar panel energy"}, {"_id": "q4", "text": "mountain goat"}]
QRELS = [("q1", "007", 1), ("q2", "d2", 2), ("q3", "d3", 1)]
VOCAB = sorted({w for d in CORPUS for w in (d["title"] + " " + d["text"]).split()})


def write_beir(folder, corpus=CORPUS, queries=QUERIES, qrels=QRELS, header="query-id\tcorpus-id\tscore"):
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("\n".join([header, *("\t".join(map(str, q)) for q in qrels)]) + "\n")
    return folder


def bag_of_words(texts):
    out = np.zeros((len(texts), len(VOCAB)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.split():
            if w in VOCAB:
                out[i, VOCAB.index(w)] += 1
    return out + 1e-3  # no all-zero row


def test_a_beir_folder_lands_in_mtebs_retrieval_task_as_its_hub_loader_puts_it(tmp_path):
    import mteb
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    from trainer.serving.evaluation.mteb_local import load_local, local_folders

    task = mteb.get_task("SciFact")
    folders = local_folders(task, str(write_beir(tmp_path / "SciFact").parent))
    source = load_local(task, folders)
    assert isinstance(task, AbsTaskRetrieval) and task.data_loaded
    split = task.dataset["default"]["test"]
    corpus = split["corpus"]
    assert corpus["id"] == ["007", "d2", "d3", "d4", "d5", "d6"]  # strings, leading zero kept
    assert corpus["title"][0] == "apple orchard" and corpus["text"][4] == "a document without a title"
    assert split["queries"]["id"] == ["q1", "q2", "q3"]  # q4 has no qrels: dropped, as mteb's loader does
    assert split["relevant_docs"] == {"q1": {"007": 1}, "q2": {"d2": 2}, "q3": {"d3": 1}}
    assert split["top_ranked"] is None
    files = source["subsets"]["default"]["splits"]["test"]
    assert {k: v["rows"] for k, v in files.items()} == {"corpus": 6, "queries": 3, "qrels": 3}
    assert files["queries"]["rows_in_file"] == 4 and files["qrels"]["file"] == "qrels/test.tsv"
    assert all(len(v["sha256"]) == 64 for v in files.values())


def test_mteb_scores_it_with_ndcg_at_10_and_the_instruction_reaches_queries_only(tmp_path):
    """The ranking is known: q1 and q2 find their document first, q3 second. nDCG@10 by hand: (1 + 1 + 1/log2(3))/3."""
    import mteb

    from trainer.serving.evaluation.mteb_dedup import make_dedup
    from trainer.serving.evaluation.mteb_local import load_local, local_folders
    from trainer.serving.evaluation.mteb_model import load_instructions, make_text_model

    task = mteb.get_task("SciFact")
    load_local(task, local_folders(task, str(write_beir(tmp_path / "SciFact").parent)))
    calls = []

    def encode(texts, instruction, batch_size):
        calls.append((list(texts), instruction))
        return bag_of_words(texts)

    table = load_instructions()
    model = make_dedup(make_text_model(encode, "bow", len(VOCAB), "local", table, 8))
    result = mteb.evaluate(model, [task], cache=None, show_progress_bar=False)
    tr = result.task_results[0]
    assert tr.task.metadata.main_score == "ndcg_at_10"
    expected = (1 + 1 + 1 / math.log2(3)) / 3
    assert tr.get_score(splits=["test"]) == pytest.approx(expected, abs=1e-4)
    docs = [c for c in calls if "fruit trees in rows" in " ".join(c[0])]
    queries = [c for c in calls if c not in docs]
    # documents: every one once, as title + " " + text, with no instruction
    assert len(docs) == 1 and docs[0][1] is None and sorted(docs[0][0]) == sorted(
        (d["title"] + " " + d["text"]).strip() for d in CORPUS)
    # queries: the three with qrels, with SciFact's instruction from the shipped table (E5 / LLM2Vec)
    assert len(queries) == 1 and sorted(queries[0][0]) == ["apple orchard", "river delta", "solar panel energy"]
    assert queries[0][1] == table["SciFact"] == "Given a scientific claim, retrieve documents that support or refute the claim"
    assert model.instructions_used == {"SciFact/query": table["SciFact"], "SciFact/document": ""}


def test_malformed_retrieval_folders_are_named_in_one_line_with_file_and_line(tmp_path, plain_lm):  # noqa: F811
    bad = {
        "no-qrels": lambda f: (write_beir(f), (f / "qrels" / "test.tsv").unlink()),
        "no-corpus": lambda f: (write_beir(f), (f / "corpus.jsonl").unlink()),
        "unknown-doc": lambda f: write_beir(f, qrels=[*QRELS, ("q2", "nowhere", 1)]),
        "unknown-query": lambda f: write_beir(f, qrels=[("q9", "d2", 1)]),
        "bad-score": lambda f: write_beir(f, qrels=[("q1", "007", "high")]),
        "bad-header": lambda f: write_beir(f, header="q\td\ts"),
        "no-text": lambda f: write_beir(f, corpus=[*CORPUS, {"_id": "d7", "title": "x"}]),
        "dup-id": lambda f: write_beir(f, queries=[*QUERIES, {"_id": "q1", "text": "again"}]),
    }
    for name, make in bad.items():
        make(tmp_path / name / "NFCorpus")
    (tmp_path / "not-json" / "NFCorpus").mkdir(parents=True)
    write_beir(tmp_path / "not-json" / "NFCorpus")
    with open(tmp_path / "not-json" / "NFCorpus" / "corpus.jsonl", "a") as fh:
        fh.write("{broken\n")
    base = ["eval", "mteb", "--model", plain_lm, "--pooling", "mean", "--tasks", "NFCorpus", "--output", tmp_path / "o",
            "--no-progress", "--data-dir"]
    names = [*bad, "not-json"]
    length = [*base, tmp_path / "no-qrels", "--max-length", "0"]  # refused before any folder is read
    results = failing_cli_cases(tmp_path, [[*base, tmp_path / n] for n in names] + [length],
                                env=offline_env(tmp_path / "hf"))
    assert_one_line_error(results.pop(), ["argument --max-length: must be at least 1"])
    expect = {
        "no-qrels": ["NFCorpus/qrels/test.tsv: no such file"],
        "no-corpus": ["NFCorpus/corpus.jsonl: no such file"],
        "unknown-doc": ["qrels/test.tsv:5: corpus-id 'nowhere' is not in corpus.jsonl"],
        "unknown-query": ["qrels/test.tsv:2: query-id 'q9' is not in queries.jsonl"],
        "bad-score": ["qrels/test.tsv:2: score 'high' is not an integer"],
        "bad-header": ["qrels/test.tsv:1: header"],
        "no-text": ["corpus.jsonl:7: no text"],
        "dup-id": ["queries.jsonl:5: _id 'q1' again"],
        "not-json": ["corpus.jsonl:7: not a JSON object"],
    }
    for name, result in zip(names, results):
        assert_one_line_error(result, expect[name])


def test_a_malformed_folder_leaves_the_other_tasks_scored_and_the_run_failing(tmp_path, plain_lm):  # noqa: F811
    data = tmp_path / "data"
    write_beir(data / "NFCorpus", qrels=[*QRELS, ("q2", "nowhere", 1)])
    write_beir(data / "SciFact")
    write_jsonl(data / "STSBenchmark" / "test.jsonl", sts_rows(5, 12))
    out = tmp_path / "out"
    r = llm2comp(offline_env(tmp_path / "hf"), "eval", "mteb", "--model", plain_lm, "--pooling", "mean", "--tasks",
                 "NFCorpus,SciFact,STSBenchmark", "--data-dir", data, "--output", out, "--no-progress",
                 "--max-length", 3)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "NFCorpus not evaluated" in errors[0] and "corpus-id 'nowhere'" in errors[0]
    assert "NFCorpus: not evaluated, its local folder is malformed" in r.stdout
    s = summary(out)
    assert sorted(s["results"]) == ["STSBenchmark", "SciFact"] and list(s["not_evaluated"]) == ["NFCorpus"]
    assert s["results"]["SciFact"]["main_metric"] == "ndcg_at_10" and s["results"]["SciFact"]["data"]["source"] == "local"
    assert s["max_length"] == 3 and s["dtype"] == "float32"  # what auto became on a CPU
    assert s["aggregate"]["lists"]["llm2comp-offline"]["tasks_run"] == 2
    assert json.loads((out / "SciFact.json").read_text())["task_name"] == "SciFact"


def test_max_length_cuts_what_a_plain_lm_reads(plain_lm):  # noqa: F811
    """A setting that takes effect: texts cut at N tokens give the embedding of their first N tokens."""
    from trainer.serving.evaluation.models import PooledLM

    long_text = "one two three four five six seven eight nine ten eleven twelve"
    cut = PooledLM(str(plain_lm), "mean", max_length=4)
    full = PooledLM(str(plain_lm), "mean")
    head = full.tok.decode(full.tok(long_text, add_special_tokens=False)["input_ids"][:4])
    a, b, c = cut.encoder(4)([long_text]), full.encoder(4)([long_text]), full.encoder(4)([head])
    assert not np.allclose(a, b, atol=1e-4) and np.allclose(a, c, atol=1e-5)
