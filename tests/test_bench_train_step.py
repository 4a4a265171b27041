"""bench/train_step.py: runs end to end on CPU with the tiny model, counts model FLOPs by its documented
formula (checked here against values written out independently), gives the baseline and the project's
path the same FLOPs for the same batches, and its reimplemented reference baseline computes the same
loss as the project's path when both have the same weights."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "train_step.py"

# The tiny architecture, by hand: hidden 64, 2 layers, 4 heads of 16, 2 kv heads, MLP 128, vocab 49152;
# K = 8 memory tokens, a one-token (BOS) prefix.
H, LAYERS, HEADS, HEAD_DIM, KV, MLP, VOCAB, K, P = 64, 2, 4, 16, 2, 128, 49152, 8, 1
LINEAR = H * HEADS * HEAD_DIM + 2 * H * KV * HEAD_DIM + HEADS * HEAD_DIM * H + 3 * H * MLP  # q k v o gate up down


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# -- the documented formula, written out again -------------------------------------------------------
def stack(s: int, causal: bool, backward: bool) -> int:
    pairs = s * (s + 1) // 2 if causal else s * s
    linear, attention = 2 * LINEAR * s, 4 * HEADS * HEAD_DIM * pairs
    # frozen weights: linear backward = input gradients only (1x); attention core backward = 2x
    return LAYERS * (2 * linear + 3 * attention if backward else linear + attention)


def expected_compression(c: int, cont: int, objective: str = "kl") -> int:
    t = c if objective == "rc" else cont
    total = stack(P + c + K, False, True)  # encoder forward+backward, bidirectional
    total += stack(P + K + t, True, True) + 2 * 2 * H * VOCAB * t  # decoder and head, forward+backward
    if objective == "kl":
        total += stack(P + c + cont, True, False) + 2 * H * VOCAB * cont  # teacher and head, forward
    return total


def test_flop_formula_matches_hand_computed_values(bench):
    d = bench.dims_of("tiny")
    assert LINEAR == 36864 and bench.linear_params_per_layer(d) == LINEAR
    assert len(bench.ARCHS["tiny"][2]) == P and bench.MEMORY_TOKENS == K
    # One sample, context 20, continuation 10, kl, every term by hand:
    #   E  29 tokens, bidirectional, fwd+bwd: 2 * (2*2*36864*29 + 3*4*64*29*29)    =   9,844,224
    #   D  19 tokens, causal (190 pairs), fwd+bwd: 2 * (2*2*36864*19 + 3*4*64*190) =   5,895,168
    #      head fwd+bwd on 10 targets: 2*2*64*49152*10                            = 125,829,120
    #   teacher 31 tokens, causal (496 pairs), fwd: 2 * (2*36864*31 + 4*64*496)    =   4,825,088
    #      head fwd on 10 targets: 2*64*49152*10                                  =  62,914,560
    assert bench.compression_flops(d, [20], [10], K, P, "kl") == 209_308_160
    assert expected_compression(20, 10, "kl") == 209_308_160
    assert bench.compression_flops(d, [20, 33], [10, 7], K, P, "nll") == \
        expected_compression(20, 10, "nll") + expected_compression(33, 7, "nll")
    assert bench.compression_flops(d, [20], [10], K, P, "rc") == expected_compression(20, 10, "rc")
    # A contrastive row of 12 tokens: 21 tokens through E, fwd+bwd; encoding: forward only.
    assert bench.contrast_flops(d, [12], K, P) == 2 * (2 * 2 * 36864 * 21 + 3 * 4 * 64 * 21 * 21) == 6_870_528
    assert bench.encode_flops(d, [12], K, P) == 2 * (2 * 36864 * 21 + 4 * 64 * 21 * 21) == 3_322_368


# -- end to end on CPU: bench/gpu_session.sh --smoke (the GPU session's parts and packaging, tiny model) ----
SESSION = ROOT / "bench" / "gpu_session.sh"
# What --smoke runs (bench/session.py PARTS): pretrain --seq 48 --steps 2 --warmup 1, micro-batch 2, baseline
# then four project variants (one compiled); scl --seq 96 --steps 1 --warmup 1, micro-batch 4 (12 rows) in chunks
# of 4 / 8;
# encode micro-batch 8 with --packing 256.
STEPS, WARMUP, SEQ = 2, 1, 48
# Packages the device image lacks (bench/carry_wheels.py: not in its image list, not carried): the rehearsal
# runs as if they were absent, so a part that needs one fails here, not in the GPU's 15 minutes.
NOT_ON_DEVICE = ("datasets", "dill", "gguf", "mteb", "multiprocess", "polars", "pytrec_eval")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_session")
    site = tmp_path_factory.mktemp("device_image")
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in NOT_ON_DEVICE))
    env = {**__import__("os").environ, "OUT": str(out), "PYTHONPATH": str(site)}
    proc = subprocess.run(["bash", str(SESSION), "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:] + (out / "session.log").read_text()[-4000:]
    return out, json.loads((out / "session.json").read_text()), (out / "session.log").read_text()


def check_rates(row: dict) -> None:
    assert row["status"] == "ok"
    assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0 and row["step_ms_median"] > 0
    assert 0 < row["mfu"] <= 1
    assert row["achieved_tflops"] < row["peak_tflops"]


def check_compiled(row: dict) -> None:
    """The compiled variant compiled (in its own warm-up), without graph breaks, and the timed steps did not
    recompile: the warm-up paid for every shape of graph they needed."""
    assert row["compile"] and row["compiled_in_warmup"]["frames_compiled"] > 0, row.get("compiled_in_warmup")
    assert row["compiled_total"]["graph_breaks"] == 0
    assert row["compiled_total"]["frames_compiled"] == row["compiled_in_warmup"]["frames_compiled"], row["compiled_total"]


def test_session_output_fits_what_a_lent_machine_returns(session):
    """At most 4 files (8 come back), each under 16 MiB, plain names, no deeper than two folders."""
    out, result, log = session
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["session.json", "session.log"]
    for p in files:
        assert p.stat().st_size < 16 * 2**20 and re.fullmatch(r"[A-Za-z0-9._-]+", p.name)
        assert len(p.relative_to(out).parts) <= 3
    assert list(result["parts"]) == ["versions", "checks", "pretrain", "scl", "encode"]
    assert all(p["status"] == "ok" for p in result["parts"].values()), {k: p["status"] for k, p in result["parts"].items()}
    assert "done in" in log


def test_versions_are_checked_against_the_floors_first(session):
    _, result, log = session
    versions = result["parts"]["versions"]["result"]
    assert {"torch", "transformers", "peft", "deepspeed"} <= set(versions["floors"])
    assert versions["floors"]["transformers"]["required"].startswith("<6,>=") or ">=" in versions["floors"]["transformers"]["required"]
    assert all(v["status"] == "ok" for v in versions["floors"].values()), versions["floors"]
    assert log.index("checks:") > 0 and result["parts"]["versions"]["status"] == "ok"


def test_session_correctness_checks_pass(session):
    _, result, _ = session
    checks = result["parts"]["checks"]["result"]["checks"]
    assert set(checks) == {"losses", "bidirectionality", "packing", "dropout_kernels"}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["dropout_kernels"]["bit_identical"] and checks["bidirectionality"]["math"]["causal_change"] == 0.0


def test_pretrain_baseline_checkpointing_on_off_and_deepspeed(session, bench):
    _, result, _ = session
    part = result["parts"]["pretrain"]["result"]
    rows = {r["mode"]: r for r in part["rows"]}
    assert list(rows) == ["baseline", "project:gradient_checkpointing=0", "project:gradient_checkpointing=0,compile=1",
                          "project:gradient_checkpointing=1", "project:deepspeed=1,gradient_checkpointing=0"]
    assert [r["gradient_checkpointing"] for r in rows.values()] == [True, False, False, True, False]
    assert [r["engine"] for r in rows.values()] == ["plain", "plain", "plain", "plain", "deepspeed"]
    assert [r["compile"] for r in rows.values()] == [False, False, True, False, False]
    check_compiled(rows["project:gradient_checkpointing=0,compile=1"])
    batches = bench.compression_batches(WARMUP + STEPS, 2, SEQ, VOCAB)[WARMUP:]
    want = [sum(expected_compression(c, y) for c, y in zip(b["context_len"].tolist(), b["continuation_len"].tolist()))
            for b in batches]
    for row in rows.values():  # the same timed batches for every row: the same useful work
        check_rates(row)
        assert row["nonfinite_losses"] == 0 and len(row["per_step"]["seconds"]) == STEPS
        assert row["per_step"]["flops"] == want
        assert row["per_step"]["tokens"] == [int(b["context_len"].sum() + b["continuation_len"].sum()) for b in batches]
    assert {"project:gradient_checkpointing=0_vs_baseline", "project:deepspeed=1,gradient_checkpointing=0_vs_baseline"} \
        <= set(part["ratios"])
    assert part["complete"]


def test_scl_chunk_sizes_grouping_global_batch_and_deepspeed(session, bench):
    _, result, _ = session
    rows = {r["mode"]: r for r in result["parts"]["scl"]["result"]["rows"]}
    assert list(rows) == ["project:chunk=4", "project:chunk=8", "project:chunk=4,chunk_by_length=0",
                          "project:micro_batch=8,chunk=4", "project:chunk=4,deepspeed=1"]
    spec = importlib.util.spec_from_file_location("bench_session_parts", ROOT / "bench" / "session.py")
    parts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parts)
    full = parts.PARTS["scl"][2]  # the GPU's scl part measures compiled too
    assert "chunk=32,compile=1" in full[full.index("--variants"):]
    batches = bench.contrast_batches("scl", WARMUP + 1, 4, 96, VOCAB, 1)[WARMUP:]
    lengths = [b["query_len"].tolist() + b["positive_len"].tolist() + b["negative_len"].tolist() for b in batches]
    for name, row in rows.items():
        check_rates(row)
        if row["micro_batch"] == 4:
            assert row["per_step"]["flops"] == [sum(stack(P + s + K, False, True) for s in r) for r in lengths]
    assert rows["project:micro_batch=8,chunk=4"]["micro_batch"] == 8 and rows["project:chunk=4,deepspeed=1"]["engine"] == "deepspeed"
    # the same batch, chunks cut from rows sorted by length: fewer positions computed
    assert rows["project:chunk=4"]["padded_tokens_per_step"] < rows["project:chunk=4,chunk_by_length=0"]["padded_tokens_per_step"]


def test_encode_sorted_packed_and_arbitrary(session):
    _, result, log = session
    part = result["parts"]["encode"]["result"]
    rows = {r["mode"]: r for r in part["rows"]}
    assert set(rows) == {"project-sorted, packed", "project-sorted", "project-arbitrary"}
    for row in rows.values():
        check_rates(row)
        assert row["texts"] == 16 and row["texts_per_s"] > 0
    assert "project-sorted_vs_project-arbitrary" in part["ratios"]
    assert "texts/s" in log


def test_a_failing_or_overrunning_part_loses_only_itself(tmp_path):
    """A part that crashes after writing some results, and one stopped at the budget, are recorded with what
    they wrote; the parts after them still run; session.json is whole after every part."""
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("bench_session", ROOT / "bench" / "session.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    crash = tmp_path / "crash.py"
    crash.write_text("import json, sys\nout = sys.argv[sys.argv.index('--json') + 1]\n"
                     "json.dump({'rows': [{'mode': 'first', 'status': 'ok'}]}, open(out, 'w'))\nsys.exit(3)\n")
    slow = tmp_path / "slow.py"
    slow.write_text("import json, sys, time\nout = sys.argv[sys.argv.index('--json') + 1]\n"
                    "json.dump({'rows': [{'mode': 'early', 'status': 'ok'}]}, open(out, 'w'))\ntime.sleep(60)\n")
    ok = tmp_path / "ok.py"
    ok.write_text("import json, sys\njson.dump({'rows': []}, open(sys.argv[sys.argv.index('--json') + 1], 'w'))\n")
    s = mod.Session(str(tmp_path / "out"), smoke=True, budget_s=8)
    s.run_part("crash", [str(crash)], 0)
    t = time.monotonic()
    s.run_part("slow", [str(slow)], 0)
    assert time.monotonic() - t < 15  # stopped at the budget, not after its 60 s
    s.run_part("late", [str(ok)], 5)  # the budget is spent: skipped, with the reason
    parts = json.loads((tmp_path / "out" / "session.json").read_text())["parts"]
    assert parts["crash"]["status"] == "exit 3" and parts["crash"]["result"]["rows"][0]["mode"] == "first"
    assert parts["slow"]["status"].startswith("stopped at the budget") and parts["slow"]["result"]["rows"][0]["mode"] == "early"
    assert parts["late"]["status"] == "skipped" and "left" in parts["late"]["reason"]


def test_baseline_computes_the_projects_loss(bench):
    """With the same weights (memory rows and LoRA copied over), the reimplemented reference approach and
    the project's path compute the same loss: the baseline measures the same computation, done differently."""
    import torch

    a = bench.parse_args(["--stage", "pretrain", "--model-config", "tiny", "--device", "cpu", "--seq", "40"])
    batch = bench.compression_batches(1, 2, a.seq, VOCAB)[0]
    for objective in ("kl", "rc"):
        project = bench.build_project_model(a, "pretrain").eval()
        base = bench.ReferenceBaseline(a, "pretrain")
        base.train(False)
        with torch.no_grad():
            base.encoder.get_base_model().get_input_embeddings().weight[-K:] = project.memory.weight
            ours = {n: p for n, p in project.model.named_parameters() if "lora_" in n}
            theirs = {n: p for n, p in base.encoder.named_parameters() if "lora_" in n}
            assert list(ours) == list(theirs) and ours
            g = torch.Generator().manual_seed(1)
            for name, p in ours.items():  # LoRA B starts at zero: make the adapter matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                theirs[name].copy_(p)
            expected = float(project(objective, **batch))
            got = float(base.compression_loss(batch, objective))
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
