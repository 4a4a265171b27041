"""Stage 1 end to end on CPU: 2-process gloo runs through DeepSpeed ZeRO-1/2/3, resume, signals,
gradient checkpointing, non-finite guard, and clear errors for bad configs and data."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import RECIPE, ROOT, env_with_root, final_weights, launch, losses, make_docs, write_jsonl  # noqa: F401
from conftest import assert_one_line_error, failing_cli_cases


def eval_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("eval")]

@pytest.fixture(scope="session")
def overfit_data(tmp_path_factory, smollm2_tokenizer):
    from trainer.cli import main

    d = tmp_path_factory.mktemp("overfit_data")
    src = write_jsonl(d / "docs.jsonl", make_docs(4, seed=3, lengths=(40,)))  # one global batch: the same rows every step
    assert main(["prep", "compression", "--input", str(src), "--tokenizer", smollm2_tokenizer, "--output",
                 str(d / "shards"), "--max-tokens", "64", "--workers", "1", "--no-progress"]) == 0
    return d / "shards"


# ZeRO-1 runs with gradient accumulation (2 micro-batches of 1 per rank): the same global batch of 4.
@pytest.mark.parametrize("zero, micro, accum", [("zero1", 1, 2), ("zero2", 2, 1), ("zero3", 2, 1), ("zero3_offload", 2, 1)])
def test_two_ranks_overfit_a_small_set_under_each_zero_stage(tmp_path, overfit_data, compression_data, zero, micro,
                                                            accum):
    # Held-out windows from another prep output (the overfit set is one global batch): the diagnostics run
    # under every ZeRO stage, ZeRO-3's gathered weights included, on 2 ranks.
    r = launch(2, f"data={overfit_data}", f"eval.path={compression_data}", f"output_dir={tmp_path}",
               f"train.deepspeed={ROOT / 'ds_configs' / (zero + '.json')}",
               "objective=nll", "max_steps=20", "optim.lr=2e-2", "model.config_overrides.initializer_range=0.3",
               "optim.warmup_ratio=0", "optim.schedule=constant", f"train.micro_batch={micro}", f"train.grad_accum={accum}",
               "train.save_every=100", "train.eval_every=5")
    assert r.returncode == 0, r.stdout[-3000:]
    loss = losses(tmp_path)
    assert sorted(loss) == list(range(1, 21))
    first, last = loss[1], min(loss[19], loss[20])
    assert last < 0.85 * first, f"{zero}: loss did not fall: {loss}"
    assert f"ZeRO-{zero[4]}" in r.stdout
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "final" / "recipe.yaml").exists()
    evals = {e["step"]: e for e in eval_rows(tmp_path)}
    assert sorted(evals) == [0, 5, 10, 15, 20] and all(evals[s]["windows"] == 8 for s in evals)
    assert all(math.isfinite(evals[s][k]) for s in evals for k in ("kl_memory", "kl_no_memory", "recovered"))
    # No memory is no memory at any step: the baseline does not move; the memory figures do. On these held-out
    # windows (not the overfit set) kl_memory wanders rather than falls, and may come back near its start at
    # any one step, so it is asked to move at some step, not at the last.
    assert all(evals[0]["kl_no_memory"] == pytest.approx(evals[s]["kl_no_memory"], rel=1e-4) for s in evals)
    assert max(abs(evals[s]["kl_memory"] - evals[0]["kl_memory"]) for s in evals) > 1e-3 * evals[0]["kl_memory"]


def test_signal_checkpoints_then_resume_equals_uninterrupted(tmp_path, compression_data):
    common = [f"data={compression_data}", "max_steps=10", "train.save_every=100", "train.micro_batch=2"]
    whole = launch(2, *common, f"output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stdout[-3000:]

    part = tmp_path / "part"
    proc = launch(2, *common, f"output_dir={part}", wait=False)
    deadline = time.monotonic() + 300
    while not (part / "metrics.jsonl").exists() or len((part / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # What SLURM sends before the time limit; the training processes (torchrun's children) get it.
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    for w in workers:
        w.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    # Each rank exits with the requeue code; torchrun reports it (and exits 1), so the rank also
    # leaves a marker the sbatch script reads.
    assert proc.returncode != 0 and "exitcode: 75" in out, out[-3000:]
    assert (part / "REQUEUE").exists()
    stopped_at = max(losses(part))
    assert stopped_at < 10, "the signal arrived too late to test a resume"
    assert (part / "checkpoints" / f"step-{stopped_at:08d}" / "COMPLETE").exists()
    assert not (part / "final").exists()

    resumed = launch(2, *common, f"output_dir={part}")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert not (part / "REQUEUE").exists()
    assert f"resumed from" in resumed.stdout and f"at step {stopped_at}" in resumed.stdout
    a, b = losses(tmp_path / "whole"), losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    # The training time carries over the resume instead of starting again from 0.
    train_s = [r["train_s"] for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines()) if not r.get("eval")]
    assert len(train_s) == 10 and train_s == sorted(train_s) and train_s[0] > 0, train_s
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6 * max(1.0, abs(a[step])), (step, a[step], b[step])
    wa, wb = final_weights(tmp_path / "whole"), final_weights(part)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k
    # The held-out diagnostics: before any update and at the end, equal after a resume; training raises the
    # share of the teacher's information the memory carries.
    ea, eb = eval_rows(tmp_path / "whole"), eval_rows(part)
    assert [e["step"] for e in ea] == [0, 10] and [e["step"] for e in eb] == [0, 10]
    assert ea[-1]["recovered"] == pytest.approx(eb[-1]["recovered"], abs=1e-5)
    assert ea[-1]["recovered"] > ea[0]["recovered"] + 0.05, (ea[0]["recovered"], ea[-1]["recovered"])
    info = json.loads((part / "final" / "run_info.json").read_text())
    assert info["diagnostics"]["recovered"] == pytest.approx(eb[-1]["recovered"])
    assert info["eval_data"]["windows"] == 8 and info["eval_data"]["held_out_of_training"] is True
    assert "held-out: kl" in resumed.stdout


def test_zero3_gradient_checkpointing_with_lora_matches_plain(tmp_path, compression_data):
    common = [f"data={compression_data}", "max_steps=4", "train.save_every=100", "train.micro_batch=2",
              f"train.deepspeed={ROOT / 'ds_configs' / 'zero3.json'}", "model.lora.dropout=0.1"]
    plain = launch(2, *common, f"output_dir={tmp_path / 'plain'}")
    ckpt = launch(2, *common, f"output_dir={tmp_path / 'ckpt'}", "train.gradient_checkpointing=true")
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert ckpt.returncode == 0, ckpt.stdout[-3000:]
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert a.keys() == b.keys()
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(a[s])), (s, a[s], b[s])
    wa, wb = final_weights(tmp_path / "plain"), final_weights(tmp_path / "ckpt")
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-5, k


NAN_AFTER = """
import sys, torch
import trainer.objectives.compression as c
real = c.compression_loss
calls = {"n": 0}
def patched(model, objective, batch):
    calls["n"] += 1
    loss = real(model, objective, batch)
    return loss * float("nan") if calls["n"] in BAD else loss
c.compression_loss = patched
from trainer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("bad, expect_code", [({2, 3}, 0), (set(range(3, 100)), 2)])
def test_nonfinite_losses_are_skipped_then_abort(tmp_path, compression_data, bad, expect_code):
    script = tmp_path / "nan.py"
    script.write_text(NAN_AFTER.replace("BAD", repr(bad)))
    env = env_with_root()
    r = subprocess.run([sys.executable, str(script), "pretrain", "--config", str(RECIPE), f"data={compression_data}",
                        f"output_dir={tmp_path / 'run'}", "max_steps=5", "train.max_nonfinite=3", "train.progress=false",
                        f"train.deepspeed={ROOT / 'ds_configs' / 'zero2.json'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == expect_code, r.stdout[-2000:] + r.stderr[-2000:]
    if expect_code == 0:
        recs = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                if not r.get("eval")]
        assert recs[-1]["step"] == 5 and recs[-1]["skipped_nonfinite"] == 2
        assert all(r["loss"] == r["loss"] for r in recs)  # no NaN reached the logged losses
    else:
        assert "3 non-finite losses in a row" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def alien_tokenizer_data(tmp_path, bpe_tokenizer):
    from trainer.cli import main

    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(10, lengths=(60,)))
    assert main(["prep", "compression", "--input", str(src), "--tokenizer", bpe_tokenizer, "--output",
                 str(tmp_path / "alien"), "--workers", "1", "--no-progress"]) == 0
    return tmp_path / "alien"


def run_single(*overrides, config=RECIPE):
    env = env_with_root()
    return subprocess.run([sys.executable, "-m", "trainer.cli", "pretrain", "--config", str(config),
                           f"train.deepspeed={ROOT / 'ds_configs' / 'zero2.json'}", "train.progress=false",
                           *map(str, overrides)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bad_configs_and_data_give_one_line_errors(tmp_path, compression_data, alien_tokenizer_data, smollm2):
    cases = [
        ([f"data={tmp_path / 'missing'}"], ["missing", "no such directory"]),
        ([f"data={alien_tokenizer_data}"], ["tokenized with", "bpe_tokenizer", "smollm2-135m", "rerun `llm2comp prep`"]),
        ([f"data={compression_data}", "model.memory_tokens=0"], ["model.memory_tokens must be positive"]),
        ([f"data={compression_data}", "train.max_stepz=3"], ["unknown key 'train.max_stepz'", "train.max_steps"]),
        ([f"data={compression_data}", "objective=mse"], ["objective.kind", "'kl'"]),
        ([f"data={compression_data}", "train.report_to=[wandb]"], ["pip install wandb"]),  # no wandb installed here
        ([f"data={compression_data}", "model.first_token=<|nope|>"], ["model.first_token", "not a single entry"]),
        ([f"data={compression_data}", "objective=mntp", "model.pooling=mean", "model.train_memory=true"],
         ["model.train_memory", "mntp"]),
        ([f"data={compression_data}", "eval.windows=100000"], ["eval.windows 100000", "eval.path"]),
        ([f"data={compression_data}", "optim.warmup_start_lr=1.0"], ["optim.warmup_start_lr"]),
    ]
    (tmp_path / "alien_arch").mkdir()
    (tmp_path / "alien_arch" / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    cases.append(([f"data={compression_data}", f"model={tmp_path / 'alien_arch'}", f"model.tokenizer={smollm2}"],
                  ["alien_arch", "unknown or unreadable architecture"]))
    results = failing_cli_cases(tmp_path, [["pretrain", "--config", RECIPE, f"train.deepspeed={ROOT / 'ds_configs' / 'zero2.json'}",
                                            "train.progress=false", f"output_dir={tmp_path / 'run'}", *overrides]
                                           for overrides, _ in cases], env=env_with_root())
    for (_, needles), result in zip(cases, results):
        assert_one_line_error(result, needles)


@pytest.mark.opt_in
@pytest.mark.skipif(os.environ.get("LLM2COMP_OPT_IN") != "1", reason="real-model step; set LLM2COMP_OPT_IN=1")
def test_real_kl_step_on_smollm2(tmp_path, compression_data, smollm2):
    r = run_single(f"data={compression_data}", f"output_dir={tmp_path}", f"model={smollm2}", "model.random_init=false",
                   "model.config_overrides={}", "max_steps=2", "train.micro_batch=2", "model.memory_tokens=8")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    loss = losses(tmp_path)
    assert set(loss) == {1, 2} and all(0 < v < 20 for v in loss.values())


def checkpoint_is_lean(run: Path, step: int) -> None:
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    artifacts = size(run / "final" / "adapter") + (run / "final" / "memory.safetensors").stat().st_size
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    assert size(ckpt) <= 10 * artifacts, (size(ckpt), artifacts)
    import torch

    states = torch.load(next(ckpt.glob("*model_states.pt")), weights_only=False)["module"]
    assert states and all("lora_" in k or k.startswith("memory.") for k in states), [k for k in states][:5]


def test_checkpoints_hold_only_trainables_under_zero2_and_other_weights_are_refused(tmp_path, compression_data):
    """No frozen base weight in a checkpoint (the tied lm_head included): at most 10x the trainable artifacts.
    (Resume from such checkpoints equals an uninterrupted run: the signal test above, and ZeRO-3 below.)"""
    common = [f"data={compression_data}", "train.micro_batch=2", "train.save_every=2", f"output_dir={tmp_path}"]
    r = launch(2, *common, "max_steps=2")
    assert r.returncode == 0, r.stdout[-3000:]
    checkpoint_is_lean(tmp_path, 2)
    bad = launch(2, *common, "max_steps=4", "model.lora.target_modules=[q_proj,k_proj]")
    assert bad.returncode != 0 and "trainable weights missing" in bad.stdout + bad.stderr, bad.stdout[-2000:]


def test_zero3_checkpoints_hold_only_trainables_and_resume_exactly(tmp_path, compression_data):
    common = [f"data={compression_data}", "train.micro_batch=2", "train.save_every=2", "optim.schedule=constant",
              "optim.warmup_ratio=0", f"train.deepspeed={ROOT / 'ds_configs' / 'zero3.json'}"]
    whole = launch(2, *common, "max_steps=4", f"output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stdout[-3000:]
    part = tmp_path / "part"
    for steps in (2, 4):
        r = launch(2, *common, f"max_steps={steps}", f"output_dir={part}")
        assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    a, b = losses(tmp_path / "whole"), losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6 * max(1.0, abs(a[step])), (step, a[step], b[step])
    wa, wb = final_weights(tmp_path / "whole"), final_weights(part)
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k
    checkpoint_is_lean(part, 4)


def test_weights_and_biases_on_request(tmp_path, compression_data):
    """train.report_to: [wandb] logs every metric to a W&B run (a stand-in package here; WANDB_MODE is W&B's
    own, passed through). Without the package: a case of test_bad_configs_and_data_give_one_line_errors."""
    stub = ROOT / "tests" / "stubs"
    common = [f"data={compression_data}", "max_steps=2", "train.micro_batch=2", "train.report_to=[wandb]"]
    env = {"PYTHONPATH": f"{stub}{os.pathsep}{ROOT}", "WANDB_MODE": "offline", "WANDB_STUB_OUT": str(tmp_path / "w.json")}
    r = launch(1, *common, f"output_dir={tmp_path / 'run'}", env_extra=env)
    assert r.returncode == 0, r.stdout[-3000:]
    got = json.loads((tmp_path / "w.json").read_text())
    assert got["mode"] == "offline" and got["init"]["project"] == "llm2comp" and got["init"]["id"] == "stub1234"
    assert got["init"]["config"]["train"]["max_steps"] == 2 and got["init"]["resume"] == "allow"
    steps = [x for x in got["logs"] if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2] and all("lr" in x for x in steps)
    evals = [x for x in got["logs"] if "eval/recovered" in x]  # the held-out diagnostics, before and after
    assert [x["step"] for x in evals] == [0, 2] and all("eval/kl_memory" in x for x in evals)
    assert (tmp_path / "run" / "wandb_run_id").read_text().strip() == "stub1234"
