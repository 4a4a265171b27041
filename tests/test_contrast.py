"""Stages 2 and 3 on CPU: cached gradients across 2 ranks under ZeRO-2/3 equal a single-process uncached
full-batch computation (dropout on); negatives cross ranks; chaining; resume; bad inputs."""
import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import RECIPES, ROOT, cli_env, contrast, final_weights, free_port, losses
from conftest import assert_one_line_error, failing_cli_cases

DRIVER = ROOT / "tests" / "drivers" / "contrast_grads.py"

def grad_driver(tmp_path, mode, name, recipe, *overrides, nproc=2, env_extra=None):
    env = {**cli_env(), **(env_extra or {})}
    launcher = [sys.executable] if mode == "reference" else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    r = subprocess.run([*launcher, str(DRIVER), mode, str(tmp_path / name), str(recipe), *map(str, overrides)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return torch.load(tmp_path / name)


def relative_errors(ref: dict, got: dict) -> dict:
    """Per tensor, |got - ref| / |ref| (Frobenius norms), over the gradients that are not zero."""
    assert ref.keys() == got.keys() and any("lora" in k for k in ref) and any("memory" in k for k in ref)
    return {k: ((got[k] - r).norm() / r.norm()).item() for k, r in ref.items() if r.norm() > 0}


# Each ZeRO stage with each objective once: ZeRO-3 plain (with gradient checkpointing), ZeRO-2 with two
# accumulated cached batches (ucl) and with packing (scl); a plain ZeRO-2 case adds nothing these miss.
@pytest.mark.parametrize("zero, kind, accum, packing", [
    ("zero3", "ucl", 1, False), ("zero3", "scl", 1, False), ("zero2", "ucl", 2, False), ("zero2", "scl", 1, True)])
def test_cached_two_rank_gradients_equal_single_process_uncached(tmp_path, sentences, pairs, stage1_run, zero, kind,
                                                                 accum, packing):
    """LoRA dropout and attention dropout on; ZeRO-3 also with gradient checkpointing (the recomputation
    must replay the same dropout); train.grad_accum=2 accumulates two cached batches in one step; with
    data.packing the cached chunks run packed against the padded reference."""
    data = sentences if kind == "ucl" else pairs
    recipe = RECIPES / f"tiny-cpu-{kind}.yaml"
    # model.train_memory: the memory embeddings' gradients are cached too (frozen by default in stages 2-3).
    common = [f"data={data}", f"init_from={stage1_run}", "model.lora.dropout=0.1", "contrast.attention_dropout=0.2",
              "train.seed=7", f"train.grad_accum={accum}", f"train.deepspeed={ROOT / 'ds_configs' / (zero + '.json')}",
              "model.train_memory=true"]
    a = grad_driver(tmp_path, "reference", "ref.pt", recipe, *common, "train.micro_batch=8", "chunk=1000")
    b = grad_driver(tmp_path, "cached", "got.pt", recipe, *common, "train.micro_batch=4", "chunk=2",
                    f"train.gradient_checkpointing={zero == 'zero3'}", f"data.packing={packing}",
                    "data.max_tokens_per_row=48")
    assert a["dropout_calls"] > 0 and b["dropout_calls"] > 0, "row-seeded attention dropout never ran"
    assert abs(a["loss"] - b["loss"]) < 1e-5, (a["loss"], b["loss"])
    # Cross-device negatives: the global loss is not what rank 0 computes from its own rows alone.
    assert abs(b["alone"] - b["loss"]) > 1e-3
    assert a["grads"].keys() == b["grads"].keys() and any("lora" in k for k in a["grads"])
    assert any("memory" in k for k in a["grads"])
    for k, ref_grad in a["grads"].items():
        err = ((b["grads"][k] - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-3)).item()
        assert err < 1e-5, (k, err)


# bf16: the median over gradient tensors of |cached - uncached| / |uncached|. Measured (commit in
# docs/BENCHMARKS.md): 0.1 % with fp32 accumulation, 0.8 % with DeepSpeed's default bf16 accumulation.
BF16_TOLERANCE = 0.004


def test_cached_bf16_gradients_accumulate_in_fp32(tmp_path, sentences):
    """64 micro-steps a step (2 ranks, chunk 1, 16 sentences x 2 views, grad_accum 2), bf16 weights: the
    cached gradients match the uncached bf16 ones within BF16_TOLERANCE only when DeepSpeed accumulates
    the micro-steps in fp32. The forward passes agree bit for bit, so the gap is the accumulation."""
    recipe = RECIPES / "tiny-cpu-ucl.yaml"
    common = [f"data={sentences}", "model.lora.dropout=0.1", "contrast.attention_dropout=0.2", "train.seed=7",
              "contrast.temperature=1.0", "train.grad_accum=2", "model.dtype=bfloat16", "model.train_memory=true"]
    ref = grad_driver(tmp_path, "reference", "ref.pt", recipe, *common, "train.micro_batch=32", "chunk=1000")
    cached = [*common, "train.micro_batch=16", "chunk=1", "train.precision=bf16"]
    fp32 = grad_driver(tmp_path, "cached", "fp32.pt", recipe, *cached)
    bf16 = grad_driver(tmp_path, "cached", "bf16.pt", recipe, *cached, env_extra={"LLM2COMP_TEST_ACCUM": "bf16"})
    assert fp32["data_types"] == {"grad_accum_dtype": "fp32"} and bf16["data_types"] is None
    assert ref["loss"] == fp32["loss"] == bf16["loss"]
    med = {}
    for name, got in (("fp32", fp32), ("bf16", bf16)):
        errs = sorted(relative_errors(ref["grads"], got["grads"]).values())
        med[name] = errs[len(errs) // 2]
    print(f"median relative gradient error, bf16 weights: fp32 accumulation {med['fp32']:.2e}, "
          f"bf16 accumulation {med['bf16']:.2e}")
    assert med["fp32"] < BF16_TOLERANCE < med["bf16"], med


def _gather_worker(rank, world, port, out):
    import torch.distributed as dist

    from trainer.objectives.contrastive import gather_groups, supervised_loss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(100 + rank)
    # Rank 0 holds one query/positive pair and no negatives; rank 1 holds only hard negatives.
    sizes = {"query": 1, "positive": 1, "negative": 0} if rank == 0 else {"query": 0, "positive": 0, "negative": 3}
    local = torch.randn(sum(sizes.values()), 8, generator=g, requires_grad=True)
    loss = supervised_loss(gather_groups(local, sizes), 0.5)
    loss.backward()
    torch.save({"loss": loss.item(), "local": local.detach(), "grad": local.grad}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_negatives_cross_ranks_and_gradients_return_to_their_rank(tmp_path):
    import torch.multiprocessing as mp

    from trainer.objectives.contrastive import supervised_loss

    mp.spawn(_gather_worker, args=(2, free_port(), str(tmp_path / "r")), nprocs=2)
    r0, r1 = torch.load(f"{tmp_path}/r.0"), torch.load(f"{tmp_path}/r.1")
    assert abs(r0["loss"] - r1["loss"]) < 1e-6  # every rank computes the same global loss
    # Rank 1's rows are only negatives of rank 0's query: the loss depends on them...
    leaf = torch.cat([r0["local"], r1["local"]]).requires_grad_(True)
    ref = supervised_loss({"query": leaf[:1], "positive": leaf[1:2], "negative": leaf[2:]}, 0.5)
    ref.backward()
    alone = supervised_loss({"query": leaf[:1], "positive": leaf[1:2], "negative": leaf[2:2]}, 0.5)
    assert abs(ref.item() - r0["loss"]) < 1e-6 and abs(alone.item() - r0["loss"]) > 1e-3
    # ...and their gradient arrives on rank 1, the rank that encoded them.
    assert r1["grad"].abs().sum() > 0
    assert torch.allclose(r0["grad"], leaf.grad[:2], atol=1e-6) and torch.allclose(r1["grad"], leaf.grad[2:], atol=1e-6)


def test_chain_from_stage1_resume_equals_uninterrupted(tmp_path, sentences, stage1_run):
    common = [f"data={sentences}", f"init_from={stage1_run}", "max_steps=8", "train.save_every=100", "chunk=3"]
    whole = contrast(2, RECIPES / "tiny-cpu-ucl.yaml", *common, f"output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stdout[-3000:]
    part = tmp_path / "part"
    proc = contrast(2, RECIPES / "tiny-cpu-ucl.yaml", *common, f"output_dir={part}", wait=False)
    deadline = time.monotonic() + 300
    while not (part / "metrics.jsonl").exists() or len((part / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for w in psutil.Process(proc.pid).children(recursive=True):
        w.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=300)[0]
    assert "exitcode: 75" in out and (part / "REQUEUE").exists(), out[-3000:]
    stopped = max(losses(part))
    assert stopped < 8
    resumed = contrast(2, RECIPES / "tiny-cpu-ucl.yaml", *common, f"output_dir={part}")
    assert resumed.returncode == 0 and f"at step {stopped}" in resumed.stdout, resumed.stdout[-3000:]
    a, b = losses(tmp_path / "whole"), losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-6 * max(1.0, abs(a[s])), (s, a[s], b[s])
    wa, wb = final_weights(tmp_path / "whole"), final_weights(part)
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-6, k
    lineage = json.loads((part / "final" / "lineage.json").read_text())
    assert lineage["adapters"] == [str(stage1_run / "final" / "adapter"), str(part / "final" / "adapter")]


def test_plain_base_then_scl_from_the_ucl_run(tmp_path, sentences, pairs):
    ucl = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", f"data={sentences}", f"output_dir={tmp_path / 'ucl'}", "max_steps=2")
    assert ucl.returncode == 0, ucl.stdout[-3000:]
    scl = contrast(2, RECIPES / "tiny-cpu-scl.yaml", f"data={pairs}", f"init_from={tmp_path / 'ucl'}",
                   f"output_dir={tmp_path / 'scl'}", "max_steps=2", "contrast.one_source_per_batch=true", "chunk=2")
    assert scl.returncode == 0, scl.stdout[-3000:]
    assert len(json.loads((tmp_path / "scl" / "final" / "lineage.json").read_text())["adapters"]) == 2


def test_bad_inputs_give_one_line_errors(tmp_path, sentences, pairs):
    cases = [
        (RECIPES / "tiny-cpu-ucl.yaml", [f"data={pairs}"], ["holds 'pairs' shards", "expected 'sentences'"]),
        (RECIPES / "tiny-cpu-scl.yaml", [f"data={sentences}"], ["holds 'sentences' shards", "expected 'pairs'"]),
        (RECIPES / "tiny-cpu-ucl.yaml", [f"data={sentences}", "train.micro_batch=100"],
         ["smaller than one global batch", "micro_batch 100"]),
        (RECIPES / "tiny-cpu-scl.yaml", [f"data={pairs}", "contrast.negatives=3"], ["contrast.negatives", "3 hard negatives"]),
        (RECIPES / "tiny-cpu-ucl.yaml", [f"data={sentences}", f"init_from={tmp_path}"], ["init.init_from", "lineage.json"]),
        (RECIPES / "tiny-cpu-ucl.yaml", [f"data={sentences}", "chunk=0"], ["contrast.chunk must be at least 1, got 0"]),
        (RECIPES / "tiny-cpu-ucl.yaml", [f"data={sentences}", "model.train_input_embeddings=true"],
         ["model.train_input_embeddings", "stage-1 option"]),
    ]
    results = failing_cli_cases(tmp_path, [["contrast", "--config", recipe, "train.progress=false",
                                            f"output_dir={tmp_path / 'run'}", *overrides] for recipe, overrides, _ in cases])
    for (_, _, needles), result in zip(cases, results):
        assert_one_line_error(result, needles)


def test_attention_dropout_changes_the_first_loss_and_is_recorded(tmp_path, sentences):
    """Black-box, as a user would see it: with LoRA dropout off, attention dropout alone must change the
    first ucl loss (the two views differ), and the run directory records the rate the modules carry."""
    first = {}
    for p in (0.0, 0.2):
        out = tmp_path / f"p{p}"
        r = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", f"data={sentences}", f"output_dir={out}", "max_steps=1",
                     "seed=0", "model.lora.dropout=0.0", f"contrast.attention_dropout={p}")
        assert r.returncode == 0, r.stdout[-3000:]
        first[p] = losses(out)[1]
        eff = json.loads((out / "effective_settings.json").read_text())
        assert eff["attention_dropout"] == p and eff["lora"]["dropout"] == 0.0
        assert eff["attention_dropout_row_seeded"] == (p > 0)
        assert f"(dropout {p}" in r.stdout and "bidirectional check passed" in r.stdout
        info = json.loads((out / "final" / "run_info.json").read_text())
        assert info["stage"] == "ucl" and info["effective"]["attention_dropout"] == p
    assert abs(first[0.0] - first[0.2]) > 1e-3 * abs(first[0.0]), first


def test_memory_stays_frozen_in_stages_2_3_unless_the_recipe_trains_it(tmp_path, sentences, stage1_run, ucl_run):
    """The authors merge the adapter and attach a fresh LoRA: only LoRA trains, the stage-1 memory carries over
    as it is. model.train_memory=true trains it (the strongest no-stage-1 control)."""
    from safetensors.torch import load_file

    memory = lambda run: load_file(run / "final" / "memory.safetensors")["memory"]
    assert json.loads((ucl_run / "effective_settings.json").read_text())["memory_tokens"]["trainable"] is False
    assert torch.equal(memory(ucl_run), memory(stage1_run))
    r = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", f"data={sentences}", f"init_from={stage1_run}",
                 f"output_dir={tmp_path}", "max_steps=3", "model.train_memory=true")
    assert r.returncode == 0, r.stdout[-3000:]
    assert json.loads((tmp_path / "effective_settings.json").read_text())["memory_tokens"]["trainable"] is True
    assert (memory(tmp_path) - memory(stage1_run)).abs().max() > 1e-6
