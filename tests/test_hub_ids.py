"""Hugging Face Hub ids wherever a model or tokenizer folder is accepted, resolved through the Hub's cache:
tested offline with a local cache in the Hub's own layout (models--ORG--NAME/refs/main, snapshots/HASH)."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, env_with_root, make_docs, write_jsonl

REPO_ID = "test-org/tiny-smollm2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, smollm2_tokenizer):
    cache = tmp_path_factory.mktemp("hf_hub_cache")
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{smollm2_tokenizer}/{name}", snap / name)
    return cache


def run(env, *args):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def env_for(cache):
    env = env_with_root()
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_prep_and_training_take_a_hub_id_from_the_cache(tmp_path, hub_cache):
    env = env_for(hub_cache)
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(12, seed=71, lengths=(40, 80)))
    r = run(env, "prep", "compression", "--input", src, "--tokenizer", REPO_ID, "--output", tmp_path / "shards",
            "--max-tokens", "64", "--no-progress", "--workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(env, "pretrain", "--config", ROOT / "launch" / "recipes" / "tiny-cpu-pretrain.yaml", f"model={REPO_ID}",
            f"data={tmp_path / 'shards'}", f"output_dir={tmp_path / 'run'}", "max_steps=1", "train.progress=false")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lineage = json.loads((tmp_path / "run" / "final" / "lineage.json").read_text())
    assert lineage["base"]["name"] == REPO_ID and COMMIT in lineage["base"]["path"]


def test_an_id_missing_from_the_cache_offline_is_one_line(tmp_path, hub_cache):
    env = env_for(hub_cache)
    r = run(env, "pretrain", "--config", ROOT / "launch" / "recipes" / "tiny-cpu-pretrain.yaml",
            "model=nobody/not-cached", f"data={tmp_path}", f"output_dir={tmp_path / 'run'}")
    err = [l for l in r.stderr.splitlines() if "error:" in l]
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "nobody/not-cached" in err[0] and str(hub_cache) in err[0] and "HF_HUB_OFFLINE" in err[0]
    (tmp_path / "x.txt").write_text("a sentence\n")
    r = run(env, "prep", "sentences", "--input", tmp_path / "x.txt", "--tokenizer", "nobody/not-cached", "--output", tmp_path / "o")
    assert r.returncode == 2 and "nobody/not-cached" in r.stderr and str(hub_cache) in r.stderr
