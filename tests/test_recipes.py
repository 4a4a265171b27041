"""Every shipped recipe loads into its typed config; launchers' environments give rank and world."""
from pathlib import Path

import pytest

from conftest import ROOT
from trainer.config import load_config
from trainer.engine.dist import world_from_env
from trainer.stages.pretrain import PretrainRecipe

PRETRAIN = sorted([*(ROOT / "launch" / "recipes").glob("*-pretrain.yaml"), *(ROOT / "launch" / "recipes").glob("*-mntp.yaml")])


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.name)
def test_pretrain_recipes_load_and_accept_the_standard_overrides(path, tmp_path):
    r = load_config(PretrainRecipe, path, [f"model={tmp_path}", f"data={tmp_path}/d", f"output_dir={tmp_path}/o",
                                           "max_steps=7", "seed=3", "resume=never"])
    assert (r.model.path, r.data.path, r.train.output_dir) == (str(tmp_path), f"{tmp_path}/d", f"{tmp_path}/o")
    assert (r.train.max_steps, r.train.seed, r.train.resume) == (7, 3, "never")
    assert (ROOT / r.train.deepspeed).exists()


def test_paper_recipe_is_the_paper_setting():
    r = load_config(PretrainRecipe, ROOT / "launch/recipes/llama2-7b-pretrain.yaml")
    assert r.model.memory_tokens == 8 and r.objective.kind == "kl"
    assert (r.model.lora.r, r.model.lora.alpha, r.model.lora.dropout) == (16, 32, 0.05)
    assert set(r.model.lora.target_modules) == {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (r.optim.lr, r.optim.weight_decay, r.optim.grad_clip, r.optim.warmup_ratio) == (1e-4, 1e-5, 2.0, 0.1)
    assert r.train.precision == "bf16"


@pytest.mark.parametrize("name", ["llama2-7b", "mistral-7b", "smollm2-135m"])
def test_llm2vec_recipes_carry_its_published_settings(name):
    """The LLM2Vec path beside LLM2Comp's: MNTP (20 %, 80/10/10, lr 5e-5, 1,000 steps), SimCSE (dropout 0.3,
    lr 3e-5, batch 128), supervised (lr 2e-4, batch 512), all mean-pooled, no memory tokens."""
    from trainer.stages.contrast import ContrastRecipe

    recipes = ROOT / "launch" / "recipes"
    m = load_config(PretrainRecipe, recipes / f"{name}-mntp.yaml")
    assert (m.objective.kind, m.objective.mask_ratio, m.objective.mask_mode, m.model.pooling) == ("mntp", 0.2, "bert", "mean")
    assert (m.optim.lr, m.train.max_steps) == (5e-5, 1000)
    u = load_config(ContrastRecipe, recipes / f"{name}-mntp-ucl.yaml")
    assert (u.contrast.attention_dropout, u.model.lora.dropout, u.optim.lr, u.model.pooling) == (0.3, 0.3, 3e-5, "mean")
    assert u.train.micro_batch * 8 == 128
    s = load_config(ContrastRecipe, recipes / f"{name}-mntp-scl.yaml")
    assert (s.optim.lr, s.model.pooling, s.train.micro_batch * 8) == (2e-4, "mean", 512)


def test_compression_objectives_need_memory_pooling():
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="objective kl compresses into memory tokens: it needs model.pooling=memory"):
        load_config(PretrainRecipe, ROOT / "launch/recipes/tiny-cpu-pretrain.yaml", ["pooling=mean"])
    assert load_config(PretrainRecipe, ROOT / "launch/recipes/tiny-cpu-pretrain.yaml",
                       ["objective=mntp", "pooling=last"]).model.pooling == "last"


@pytest.mark.parametrize(
    "env, expect",
    [
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (3, 8, 1)),  # torchrun / deepspeed launcher
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "10.0.0.1"},
         (5, 16, 1)),  # srun, a task per GPU (the head node's address: test below)
        ({}, (0, 1, 0)),  # a plain `python -m trainer.cli pretrain`
    ],
)
def test_rank_and_world_from_each_launcher(monkeypatch, env, expect):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first so that monkeypatch restores even the keys world_from_env() writes: a leaked
        # RANK=5 WORLD_SIZE=16 would make every later subprocess wait for 15 peers that never come.
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    w = world_from_env()
    assert (w.rank, w.size, w.local_rank) == expect
    import os

    assert os.environ["RANK"] == str(expect[0]) and os.environ["WORLD_SIZE"] == str(expect[1])


CONTRAST = sorted(p for p in (ROOT / "launch" / "recipes").glob("*.yaml") if p.stem.endswith(("-ucl", "-scl")))


@pytest.mark.parametrize("path", CONTRAST, ids=lambda p: p.name)
def test_contrast_recipes_load_and_accept_init_from_and_chunk(path, tmp_path):
    from trainer.stages.contrast import ContrastRecipe

    r = load_config(ContrastRecipe, path, [f"data={tmp_path}", f"init_from={tmp_path}/run", "chunk=5", "max_steps=2"])
    assert (r.init.init_from, r.contrast.chunk, r.train.max_steps) == (f"{tmp_path}/run", 5, 2)
    assert r.contrast.kind == path.stem.rsplit("-", 1)[1]
    assert (ROOT / r.train.deepspeed).exists()


@pytest.mark.parametrize("command, key", [("pretrain", "  objective.mask_ratio = 0.2   [float]"),
                                          ("contrast", "  contrast.attention_dropout = 0.2   [float]")])
def test_help_lists_every_recipe_key_with_its_default(command, key):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "trainer.cli", command, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and key in r.stdout and "launch/recipes" in r.stdout, r.stdout[-2000:] + r.stderr[-1000:]
    assert "  train.report_to = ['tensorboard']" in r.stdout and "model.pooling = 'memory'" in r.stdout


@pytest.mark.parametrize("nodelist, first", [
    ("gpu[007-009,12],cpu1", "gpu007"), ("rack[1-2]-n[01-04]", "rack1-n01"), ("node5", "node5"),
    ("a,b[1-3]", "a"), ("x[3,5-7]", "x3")])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    from trainer.engine.dist import first_host

    assert first_host(nodelist) == first


@pytest.mark.parametrize("scontrol", [False, True])
def test_srun_task_per_rank_gets_the_head_nodes_address(monkeypatch, tmp_path, scontrol):
    """srun with one task a rank (no torchrun): MASTER_ADDR is the job's first node (its NodeAddr from
    scontrol, else its host name), the port is the job's; without them DeepSpeed tries MPI discovery."""
    import os

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NODELIST"):
        monkeypatch.setenv(k, "unset")
        monkeypatch.delenv(k)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if scontrol:  # a stand-in that answers as `scontrol show node gpu007` does
        (bindir / "scontrol").write_text('#!/bin/sh\n[ "$3" = gpu007 ] && echo "NodeName=gpu007 Arch=x86_64 '
                                         'CoresPerSocket=1\n   NodeAddr=10.1.2.7 NodeHostName=gpu007 Version=24.11"\n')
        (bindir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir) + ("" if scontrol else os.pathsep + "/nonexistent"))
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: str(bindir / name) if scontrol and name == "scontrol" else None)
    for k, v in {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                 "SLURM_JOB_NODELIST": "gpu[007-008]"}.items():
        monkeypatch.setenv(k, v)
    w = world_from_env()
    assert (w.rank, w.size, w.local_rank) == (9, 16, 1)
    assert os.environ["MASTER_ADDR"] == ("10.1.2.7" if scontrol else "gpu007")
    assert os.environ["MASTER_PORT"] == str(20000 + 4242 % 20000)
