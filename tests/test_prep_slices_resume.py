"""Slicing and merge give the single run's rows; an interrupted run resumes to identical bytes."""
import json
import os
import signal
import subprocess
import time

import datasets
import pytest

from conftest import ROOT, env_with_root, make_docs, python, write_jsonl
from data_prep import shards as shards_mod
from data_prep.cli import config_from_args
from data_prep.pipeline import run as run_prep
from data_prep.units import Slice
from trainer.cli import build_parser


def prep(cli, *args):
    code, out, err = cli("prep", *args, "--no-progress")
    assert code == 0, err
    return out


def row_set(path):
    return sorted(json.dumps(r, sort_keys=True) for r in datasets.load_from_disk(str(path)).to_list())


def shard_bytes(path):
    m = json.loads((path / "manifest.json").read_text())
    return [(path / s["file"]).read_bytes() for s in m["shards"]]


@pytest.mark.parametrize("n_files", [1, 4])  # chunks dealt round-robin / whole files per slice
def test_merged_slices_equal_the_single_run(tmp_path, cli, bpe_tokenizer, n_files):
    docs = make_docs(200, seed=11)
    files = [write_jsonl(tmp_path / "in" / f"part{i}.jsonl", docs[i::n_files]) for i in range(n_files)]
    common = ["--tokenizer", bpe_tokenizer, "--max-tokens", "128", "--chunk-docs", "10", "--shard-rows", "50", "--workers", "1"]
    prep(cli, "compression", "--input", tmp_path / "in", "--output", tmp_path / "single", *common)
    for i in range(3):
        prep(cli, "compression", "--input", tmp_path / "in", "--output", tmp_path / f"slice{i}", "--slice", f"{i}/3", *common)
    sizes = [json.loads((tmp_path / f"slice{i}" / "manifest.json").read_text())["totals"]["rows"] for i in range(3)]
    assert all(s > 0 for s in sizes), "every slice should get work"
    # Given out of order on purpose: merge orders by slice index.
    code, _, err = cli("prep", "merge", tmp_path / "slice2", tmp_path / "slice0", tmp_path / "slice1", "--output", tmp_path / "merged")
    assert code == 0, err
    assert row_set(tmp_path / "merged") == row_set(tmp_path / "single")
    single = json.loads((tmp_path / "single" / "manifest.json").read_text())
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    for key in ("documents", "rows", "tokens"):
        assert merged["totals"][key] == single["totals"][key]
    assert merged["skipped"] == single["skipped"]
    assert merged["tokenizer"]["hash"] == single["tokenizer"]["hash"]


def test_an_array_of_more_slices_than_input_chunks_merges(tmp_path, cli, bpe_tokenizer):
    """20 records in chunks of 10 over 4 slices: slices 2 and 3 get no input. Each is a valid empty slice (exit
    0, no shards, a manifest), the array can finish, and merge gives the single run's rows. A merge of only
    empty slices is refused in one line."""
    write_jsonl(tmp_path / "in" / "docs.jsonl", make_docs(20, seed=5))
    common = ["--input", tmp_path / "in", "--tokenizer", bpe_tokenizer, "--max-tokens", "128", "--chunk-docs", "10",
              "--workers", "1"]
    prep(cli, "compression", *common, "--output", tmp_path / "single")
    for i in range(4):
        code, _, err = cli("prep", "compression", *map(str, common), "--output", str(tmp_path / f"s{i}"), "--slice", f"{i}/4")
        assert code == 0, err
    empty = [json.loads((tmp_path / f"s{i}" / "manifest.json").read_text()) for i in (2, 3)]
    assert [m["totals"]["rows"] for m in empty] == [0, 0] and [m["shards"] for m in empty] == [[], []]
    assert "gave no rows; written as an empty slice" in err
    code, _, err = cli("prep", "merge", *[str(tmp_path / f"s{i}") for i in range(4)], "--output", str(tmp_path / "merged"))
    assert code == 0, err
    assert row_set(tmp_path / "merged") == row_set(tmp_path / "single")
    from datasets import load_from_disk

    assert len(load_from_disk(str(tmp_path / "merged"))) == json.loads((tmp_path / "single" / "manifest.json").read_text())["totals"]["rows"]

    write_jsonl(tmp_path / "short" / "docs.jsonl", [{"text": "a"}] * 30)  # every record too short for a window
    short = ["--input", tmp_path / "short", *common[2:]]
    for i in range(2):
        code, _, err = cli("prep", "compression", *map(str, short), "--output", str(tmp_path / f"e{i}"), "--slice", f"{i}/2")
        assert code == 0, err
    code, _, err = cli("prep", "merge", str(tmp_path / "e0"), str(tmp_path / "e1"), "--output", str(tmp_path / "none"))
    assert code == 2 and "no rows in any of the 2 slices" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = cli("prep", "compression", *map(str, short), "--output", str(tmp_path / "whole"))
    assert code == 2 and "no rows were produced from 30 input records" in err  # unsliced: still an error


def test_merge_refuses_incomplete_or_foreign_slices(tmp_path, cli, bpe_tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(60, seed=2))
    common = ["--input", src, "--tokenizer", bpe_tokenizer, "--workers", "1", "--chunk-docs", "5"]
    prep(cli, "compression", *common, "--output", tmp_path / "a0", "--slice", "0/2")
    prep(cli, "compression", *common, "--output", tmp_path / "a1", "--slice", "1/2")
    prep(cli, "compression", *common, "--output", tmp_path / "b1", "--slice", "1/2", "--seed", "9")
    code, _, err = cli("prep", "merge", tmp_path / "a0", "--output", tmp_path / "m")
    assert code == 2 and "slices 1/2 are missing" in err
    code, _, err = cli("prep", "merge", tmp_path / "a0", tmp_path / "b1", "--output", tmp_path / "m")
    assert code == 2 and "other settings" in err and "options.seed 0 -> 9" in err, err  # the option, both values
    # prep into the same folder with another option: named the same way; an --output that is a file: refused
    code, _, err = cli("prep", "compression", *map(str, common), "--output", str(tmp_path / "a0"), "--slice", "0/2",
                       "--min-context", "20", "--no-progress")
    assert code == 2 and "options.min_context 10 -> 20" in err, err
    (tmp_path / "f").write_text("x")
    code, _, err = cli("prep", "compression", *map(str, common), "--output", str(tmp_path / "f"), "--no-progress")
    assert code == 2 and f"--output {tmp_path / 'f'}: is a file" in err, err
    code, _, err = cli("prep", "merge", tmp_path / "a0", tmp_path / "a0", "--output", tmp_path / "m")
    assert code == 2 and "given twice" in err
    # A corrupted shard is caught by its sha256.
    shard = tmp_path / "a1" / "data-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, err = cli("prep", "merge", tmp_path / "a0", tmp_path / "a1", "--output", tmp_path / "m")
    assert code == 2 and "corrupt shard" in err and "data-00000.arrow" in err


def test_slice_defaults_from_slurm_array(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    assert Slice.parse(None) == Slice(2, 4)
    assert Slice.parse("1/3") == Slice(1, 3)  # the flag wins
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert Slice.parse(None) == Slice(0, 1)


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_point", ["before_state", "between_state_and_rename", "after_rename"])
def test_resume_after_a_crash_gives_identical_shards(tmp_path, cli, bpe_tokenizer, monkeypatch, crash_point):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(150, seed=4))
    args = ["--input", str(src), "--tokenizer", bpe_tokenizer, "--max-tokens", "128",
            "--chunk-docs", "7", "--shard-rows", "23", "--workers", "1", "--no-progress"]
    prep(cli, "compression", *args, "--output", tmp_path / "whole")

    # Crash while closing the 4th shard (its rows straddle units: shard_rows and chunk sizes are coprime).
    real_write, real_replace = shards_mod._write_json_atomic, os.replace
    closes = {"n": 0}

    def write_state(path, obj):
        if "data-00003" in str(path):
            if crash_point == "before_state":
                raise Crash()
            real_write(path, obj)
            if crash_point == "between_state_and_rename":
                raise Crash()
            return
        real_write(path, obj)

    def replace(a, b):
        real_replace(a, b)
        if crash_point == "after_rename" and str(b).endswith("data-00003.arrow"):
            raise Crash()

    monkeypatch.setattr(shards_mod, "_write_json_atomic", write_state)
    monkeypatch.setattr(shards_mod.os, "replace", replace)
    ns = build_parser().parse_args(["prep", "compression", *args, "--output", str(tmp_path / "resumed")])
    with pytest.raises(Crash):
        run_prep(config_from_args(ns))
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "manifest.json").exists()

    out = prep(cli, "compression", *args, "--output", tmp_path / "resumed")
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert resumed["totals"] == whole["totals"] and resumed["skipped"] == whole["skipped"]
    assert resumed["shards"] == whole["shards"]


def test_kill_9_mid_run_then_rerun_finishes_identically(tmp_path, bpe_tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(3000, seed=8, lengths=(30, 120, 400)))
    args = [python(), "-m", "trainer.cli", "prep", "compression", "--input", str(src), "--tokenizer", bpe_tokenizer,
            "--max-tokens", "128", "--chunk-docs", "50", "--shard-rows", "200", "--workers", "2", "--no-progress"]
    env = env_with_root()
    subprocess.run([*args, "--output", str(tmp_path / "whole")], check=True, env=env, cwd=ROOT, capture_output=True)
    n_shards = len(json.loads((tmp_path / "whole" / "manifest.json").read_text())["shards"])

    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--output", str(out)], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "data-00002.arrow").exists():
        assert proc.poll() is None, "prep finished before it could be killed; make the input larger"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers
    proc.wait()
    assert not (out / "manifest.json").exists()
    done_before = len(list(out.glob("data-*.arrow")))
    assert done_before < n_shards

    rerun = subprocess.run([*args, "--output", str(out)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")
