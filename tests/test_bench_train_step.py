"""bench/train_step.py: runs end to end on CPU with the tiny model, counts model FLOPs by its documented
formula (checked here against values written out independently), gives the baseline and the project's
path the same FLOPs for the same batches, and its reimplemented reference baseline computes the same
loss as the project's path when both have the same weights."""
from __future__ import annotations

import importlib.util
import json
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


# -- end to end on CPU: bench/gpu_session.sh --smoke (the GPU session's code paths, tiny model) ----------
SESSION = ROOT / "bench" / "gpu_session.sh"
# What the script's --smoke runs: --seq 48 --steps 2 --warmup 1; pretrain micro-batch 2 with --baseline;
# scl micro-batch 4 in chunks of 4 (12 rows: three chunks); encode micro-batch 8 with --packing 256.
STEPS, WARMUP, SEQ = 2, 1, 48


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_session")
    proc = subprocess.run(["bash", str(SESSION), "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OUT": str(out)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return out, proc.stdout


def check_rates(row: dict) -> None:
    assert row["status"] == "ok"
    assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0 and row["step_ms_median"] > 0
    assert 0 < row["mfu"] <= 1
    assert row["achieved_tflops"] < row["peak_tflops"]


def test_session_correctness_checks_pass(session):
    out, stdout = session
    checks = json.loads((out / "gpu_checks.json").read_text())["checks"]
    assert set(checks) == {"losses", "bidirectionality", "packing", "dropout_kernels"}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["dropout_kernels"]["bit_identical"] and checks["bidirectionality"]["math"]["causal_change"] == 0.0
    assert "done (exit 0)" in stdout and (out / "versions.txt").read_text().startswith("torch")


def test_pretrain_baseline_and_optimized(session, bench):
    out, _ = session
    result = json.loads((out / "pretrain.json").read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "project"]  # baseline first, then the project's path
    for row in rows.values():
        check_rates(row)
        assert row["nonfinite_losses"] == 0 and len(row["per_step"]["seconds"]) == STEPS
    # Same batches, same useful work: FLOPs and tokens per step agree, and follow the formula.
    base, opt = rows["baseline"]["per_step"], rows["project"]["per_step"]
    assert base["flops"] == opt["flops"] and base["tokens"] == opt["tokens"]
    batches = bench.compression_batches(WARMUP + STEPS, 2, SEQ, VOCAB)[WARMUP:]
    assert opt["flops"] == [sum(expected_compression(c, y) for c, y in zip(b["context_len"].tolist(),
                                                                             b["continuation_len"].tolist()))
                            for b in batches]
    assert opt["tokens"] == [int(b["context_len"].sum() + b["continuation_len"].sum()) for b in batches]
    assert "project_vs_baseline" in result["ratios"]
    log = (out / "pretrain.log").read_text()
    assert "baseline (reference, reimplemented)" in log and "optimized (project)" in log and "MFU %" in log


def test_scl_with_gradient_caching(session, bench):
    out, _ = session
    (row,) = json.loads((out / "scl-b4-c4.json").read_text())["rows"]
    check_rates(row)
    batches = bench.contrast_batches("scl", WARMUP + STEPS, 4, SEQ, VOCAB, 1)[WARMUP:]
    rows = [b["query_len"].tolist() + b["positive_len"].tolist() + b["negative_len"].tolist() for b in batches]
    assert row["per_step"]["flops"] == [sum(stack(P + s + K, False, True) for s in r) for r in rows]


def test_encode_sorted_packed_and_arbitrary(session):
    out, _ = session
    result = json.loads((out / "encode.json").read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"project-sorted, packed", "project-sorted", "project-arbitrary"}
    for row in rows.values():
        check_rates(row)
        assert row["texts"] == 16 and row["texts_per_s"] > 0
    assert "project-sorted_vs_project-arbitrary" in result["ratios"]
    assert "texts/s" in (out / "encode.log").read_text()


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
