"""The GPU session's parts, each on the CPU: models built on the device they run on, checks that fail
honestly and in isolation, version floors and carried wheels, the commit without git, recipe-like lengths."""
from __future__ import annotations

import importlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def bench(name: str):
    return importlib.import_module(name)


def off_device(modules, device: str) -> list[str]:
    return [n for m in modules for n, t in [*m.named_parameters(), *m.named_buffers()] if t.device.type != device]


@pytest.mark.parametrize("stage", ["pretrain", "scl", "encode"])
def test_every_model_the_bench_builds_lives_on_the_requested_device(stage):
    """On ``meta`` (a device every CPU machine has): the project's model and the reference's two copies are
    created there, weights, LoRA, memory tokens and buffers alike; none is built on the host and moved."""
    train_step = bench("train_step")
    a = train_step.parse_args(["--stage", stage, "--model-config", "tiny", "--device", "meta", "--dtype", "float32"])
    project = train_step.build_project_model(a, stage)
    assert off_device([project], "meta") == [] and project.memory.weight.device.type == "meta"
    reference = train_step.ReferenceBaseline(a, stage)
    assert off_device(reference.modules(), "meta") == []
    assert reference.prefix.device.type == "meta" and reference.memory_ids.device.type == "meta"


def test_a_model_that_is_not_bidirectional_fails_the_check_not_unavailable(monkeypatch):
    """A kernel under which attention stays causal is the failure the check exists for: reported as failed,
    with the self-check's own message, never as an unavailable backend."""
    gpu_checks, train_step = bench("gpu_checks"), bench("train_step")
    from trainer.modeling import probe

    a = gpu_checks._args("tiny", "cpu", "float32")
    model = train_step.build_project_model(a, "encode")

    def causal(*args, **kwargs):
        raise probe.NotBidirectional("bidirectionality check failed with transformers X, attention sdpa: causal")

    monkeypatch.setattr(probe, "check_bidirectional", causal)
    result = gpu_checks.check_bidirectionality(model, a)
    assert result["passed"] is False
    assert "unavailable" not in result["math"] and "causal" in result["math"]["not_bidirectional"]


def test_one_failing_check_does_not_lose_the_others(monkeypatch, tmp_path):
    gpu_checks = bench("gpu_checks")
    import trainstep.reference

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_checks, "check_losses", broken)
    monkeypatch.setattr(trainstep.reference, "ReferenceBaseline", lambda *a, **k: None)  # not needed: losses fails
    monkeypatch.setattr(sys, "argv", ["gpu_checks.py", "--smoke", "--out", str(tmp_path)])
    assert gpu_checks.main() == 1
    checks = json.loads((tmp_path / "gpu_checks.json").read_text())["checks"]
    assert checks["losses"] == {"passed": False, "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert checks["bidirectionality"]["passed"] and checks["packing"]["passed"] and checks["dropout_kernels"]["passed"]


def test_versions_below_the_floor_are_named(monkeypatch):
    versions = bench("versions")
    floors = versions.floors()
    assert floors["torch"].startswith(">=") and "transformers" in floors and "deepspeed" in floors
    real = versions.installed
    monkeypatch.setattr(versions, "installed", lambda name: {"transformers": "5.17.0", "torch": "2.11.0+cu130",
                                                            "deepspeed": None}.get(name, real(name)))
    report = versions.report(wheel_dir=None)
    assert report["floors"]["transformers"]["status"] == "below floor"
    assert report["floors"]["torch"]["status"] == "below floor"  # 2.11.0+cu130 is 2.11.0
    assert report["floors"]["deepspeed"]["status"] == "missing" and report["missing"] == ["deepspeed"]
    assert any(line.startswith("transformers 5.17.0 (needs") for line in report["below_floor"])


def fake_wheel(directory: Path, name: str, requires: list[str]) -> Path:
    path = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_carried_wheels_requirements_are_checked(tmp_path):
    """What a carried wheel needs must be carried or in the image; extras and foreign markers do not count."""
    carry_wheels, versions = bench("carry_wheels"), bench("versions")
    fake_wheel(tmp_path, "deepspeed", ["pydantic>=2", "hjson", "torch", "mpi4py; extra == 'mpi'",
                                       "pywin32; sys_platform == 'win32'"])
    fake_wheel(tmp_path, "hjson", [])
    assert carry_wheels.unmet(str(tmp_path)) == [
        "deepspeed-1.0-py3-none-any.whl needs pydantic>=2"]  # torch is in the image; hjson carried
    fake_wheel(tmp_path, "pydantic", ["annotated-types>=0.6"])
    assert carry_wheels.unmet(str(tmp_path)) == ["pydantic-1.0-py3-none-any.whl needs annotated-types>=0.6"]
    # On the machine itself: requirements against what is importable there.
    assert versions.check_carried(str(tmp_path))["unmet"] == []  # pydantic, hjson, torch are installed here
    fake_wheel(tmp_path, "peft", ["surely-not-installed-pkg>=1", "torch>=999"])
    assert versions.check_carried(str(tmp_path))["unmet"] == [
        "peft needs surely-not-installed-pkg>=1 (found none)", f"peft needs torch>=999 (found {versions.installed('torch')})"]


def test_commit_without_git_comes_from_the_environment(monkeypatch, tmp_path):
    env = bench("_env")
    monkeypatch.setattr(env, "REPO", str(tmp_path))  # a copy of the tree without .git, as on the device
    monkeypatch.setenv("LLM2COMP_COMMIT", "abc1234")
    assert env.source_commit() == "abc1234"
    monkeypatch.delenv("LLM2COMP_COMMIT")
    assert env.source_commit() == "unknown"


def test_stage3_bench_lengths_are_the_recipes():
    """Queries around 40 tokens, passages lognormal up to 512: the 7B scl recipe's texts, not sentences."""
    import numpy as np

    synthetic = importlib.import_module("trainstep.synthetic")
    (b,) = synthetic.contrast_batches("scl", 1, 512, 512, 32000, 1)
    q, p, n = (b[k].numpy() for k in ("query_len", "positive_len", "negative_len"))
    assert 30 <= np.median(q) <= 50 and q.max() <= 128
    passages = np.concatenate([p, n])
    assert 120 <= np.median(passages) <= 180 and passages.max() == 512 and (passages > 300).mean() > 0.1
