"""Faults not covered elsewhere: a disk that fills up while a checkpoint is written, and launch/local.sh's
stop-on-signal-then-rerun. (Signals and kill -9 under SLURM: test_slurm.py; kill -9 of prep:
test_prep_slices_resume.py; corrupt shards and non-finite losses: test_pretrain.py.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from conftest import launch, losses


def mount_tmpfs(mnt: Path, size_bytes: int) -> None:
    mnt.mkdir()
    kib = max(64, size_bytes // 1024)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")


def tree_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def test_disk_full_during_a_checkpoint_loses_no_completed_work(tmp_path, compression_data):
    common = [f"data={compression_data}", "max_steps=12", "train.save_every=4"]
    # A disk with room for the run's files and one checkpoint, not two: sized from a 4-step probe run.
    probe = tmp_path / "probe"
    assert launch(2, f"data={compression_data}", f"output_dir={probe}", "max_steps=4", "train.save_every=4").returncode == 0
    ckpt = tree_size(probe / "checkpoints" / "step-00000004")
    disk = tmp_path / "disk"
    mount_tmpfs(disk, tree_size(probe) - tree_size(probe / "final") + ckpt // 2)
    try:
        run = disk / "run"
        r = launch(2, *common, f"output_dir={run}")
        assert r.returncode != 0
        err = [line for line in r.stderr.splitlines() if "could not write checkpoint" in line]
        assert err and "No space left on device" in err[0] and "step-00000008" in err[0], r.stderr[-3000:]
        assert "newest complete one" in err[0] and "step-00000004" in err[0]
        ckpts = run / "checkpoints"
        assert (ckpts / "latest").read_text().strip() == "step-00000004" and (ckpts / "step-00000004" / "COMPLETE").exists()
        assert not (ckpts / "step-00000008" / "COMPLETE").exists()

        # Space freed (here: the run moved to a bigger disk), the same command resumes from the complete checkpoint.
        moved = tmp_path / "run"
        subprocess.run(["cp", "-a", str(run), str(moved)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    r = launch(2, *common, f"output_dir={moved}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {moved}/checkpoints/step-00000004 at step 4" in r.stdout
    assert sorted(losses(moved)) == list(range(1, 13))


def test_local_sh_stops_on_usr1_with_75_and_the_rerun_resumes(tmp_path, compression_data):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "NPROC": "2",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "launch" / "local.sh"), "pretrain", str(ROOT / "launch/recipes/tiny-cpu-pretrain.yaml"),
           f"data={compression_data}", f"output_dir={tmp_path / 'run'}", "max_steps=16", "train.progress=false"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    # Generous: on a fresh machine (or next to another test worker) the first launch also builds DeepSpeed's op.
    deadline = time.monotonic() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "no second step within 600 s"
        time.sleep(0.1)
    p.send_signal(signal.SIGUSR1)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 75, err[-3000:]
    stopped = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert f"stopped on a signal at step {stopped} with its checkpoint written; run the same command again" in err
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and f"at step {stopped}" in r.stdout, r.stderr[-3000:]
    assert sorted(losses(tmp_path / "run")) == list(range(1, 17))


def test_a_corrupt_shard_is_refused_before_training(tmp_path, compression_data):
    import shutil

    data = tmp_path / "shards"
    shutil.copytree(compression_data, data)
    shard = sorted(data.glob("data-*.arrow"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the token ids
    shard.write_bytes(bytes(raw))
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "pretrain", "--config",
                        str(ROOT / "launch/recipes/tiny-cpu-pretrain.yaml"), f"data={data}",
                        f"output_dir={tmp_path / 'run'}", "train.progress=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert shard.name in err[0] and "corrupt shard" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("nproc,damaged", [(1, "mp_rank_00_model_states.pt"), (2, "zero_pp_rank_1_mp_rank_00_optim_states.pt")],
                         ids=["1-rank-model-file", "2-ranks-optimizer-file"])
def test_resume_auto_passes_over_a_checkpoint_that_does_not_load(tmp_path, compression_data, nproc, damaged):
    """The newest checkpoint's model or optimizer file truncated (a copy cut short): resume=auto names it in one
    line, resumes every rank from the intact earlier one, and trains to the end; an explicit train.resume of the
    damaged one is refused in one line naming the file."""
    common = [f"data={compression_data}", f"output_dir={tmp_path}", "train.save_every=2"]
    assert launch(nproc, *common, "max_steps=4").returncode == 0
    ckpts = tmp_path / "checkpoints"
    truncate(ckpts / "step-00000004" / damaged)
    r = launch(nproc, *common, "max_steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    passed = [l for l in r.stdout.splitlines() if "does not load" in l]
    assert len(passed) == 1 and f"{ckpts}/step-00000004" in passed[0] and damaged in passed[0], r.stdout[-2000:]
    assert f"resumed from {ckpts}/step-00000002 at step 2" in r.stdout
    assert sorted(losses(tmp_path)) == list(range(1, 7))

    truncate(ckpts / "step-00000006" / damaged)
    r = launch(nproc, *common, "max_steps=8", f"train.resume={ckpts}/step-00000006")
    assert r.returncode != 0
    assert f"train.resume {ckpts}/step-00000006: does not load ({damaged}:" in r.stderr, r.stderr[-3000:]
    assert not [l for l in r.stderr.splitlines() if "/trainer/" in l and 'File "' in l]  # torchrun's own trace only


def test_resume_auto_takes_the_newest_complete_checkpoint_not_a_stale_pointer(tmp_path, compression_data):
    """A stop between COMPLETE and the pointer's rename: `latest` one behind and a stray latest.tmp<pid>. The
    resume takes the newest complete checkpoint (redoing no step) and removes the stray file."""
    common = [f"data={compression_data}", f"output_dir={tmp_path}", "train.save_every=2"]
    assert launch(1, *common, "max_steps=4").returncode == 0
    ckpts = tmp_path / "checkpoints"
    (ckpts / "latest").write_text("step-00000002\n")
    (ckpts / "latest.tmp4242").write_text("step-00000004\n")
    r = launch(1, *common, "max_steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {ckpts}/step-00000004 at step 4" in r.stdout
    assert not (ckpts / "latest.tmp4242").exists() and (ckpts / "latest").read_text().strip() == "step-00000006"
