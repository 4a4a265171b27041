"""The sbatch scripts on a real SLURM cluster (tests/slurm_cluster.py: a controller and two slurmd daemons
emulating nodes n1 and n2 on this machine), with the tiny CPU recipes on gloo:

1. a 2-node ZeRO-2 stage-1 job equals a single-node 2-process run (launch/local.sh), loss for loss;
2. `scancel --signal=USR1` mid-run: checkpoint, requeue, resume; losses and final weights as uninterrupted;
3. `kill -9` of one rank: the job fails naming the rank, every checkpoint marked complete is whole, and a
   resubmission resumes from the newest one and ends as uninterrupted;
4. a stage-3 contrastive job across the 2 nodes (negatives gathered from both) equals the 2-process run;
and the prep array job's slices, merged by the job it submits, equal a single prep run.

Skipped, with the reason, where SLURM can be neither found nor installed (needs root and apt)."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import ROOT, make_docs, write_jsonl
from conftest import final_weights, losses, prep

import slurm_cluster

RECIPES = ROOT / "launch" / "recipes"
STEPS = 30  # long enough on 2 CPU cores for a signal or a kill to land mid-run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    c = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.run("scancel", "--user=root")
        c.stop()


def job_env() -> dict:
    bindir = str(Path(sys.executable).parent)  # torchrun and python of this environment
    return {"PATH": bindir + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def submit(cluster, script: str, out: Path, recipe: str, *overrides) -> int:
    """`sbatch -N 2 launch/slurm/SCRIPT RECIPE k=v...`, sized for the emulated CPU nodes."""
    return cluster.sbatch("-N", "2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                          f"--output={out / '%x-%j.out'}", str(ROOT / "launch" / "slurm" / script),
                          str(RECIPES / recipe), "train.progress=false", *map(str, overrides), env=job_env(), cwd=ROOT)


def log_of(out: Path, job: int) -> str:
    return "\n".join(p.read_text() for p in out.glob(f"*-{job}.out"))


def finished(cluster, out: Path, job: int, state="COMPLETED", timeout=400) -> str:
    info = cluster.wait_job(job, timeout)
    log = log_of(out, job)
    assert info["JobState"] == state, f"job {job}: {info.get('JobState')} {info.get('ExitCode')}\n{log[-4000:]}"
    return log


def local(stage: str, recipe: str, *overrides) -> None:
    env = {**os.environ, **job_env(), "NPROC": "2", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "launch" / "local.sh"), stage, str(RECIPES / recipe), "train.progress=false",
                        *map(str, overrides)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def wait_for_step(run: Path, step: int, job_info, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and sum('"eval": true' not in l for l in metrics.read_text().splitlines()) >= step:
            return
        assert job_info().get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"), job_info()
        time.sleep(0.1)
    raise TimeoutError(f"{metrics} did not reach step {step}")


@pytest.fixture(scope="module")
def data(tmp_path_factory, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("slurm_data")
    src = write_jsonl(d / "docs.jsonl", make_docs(120, seed=31, lengths=(40, 90)))
    prep("compression", "--input", src, "--tokenizer", smollm2_tokenizer, "--output", d / "compression", "--max-tokens", "64")
    docs = make_docs(96, seed=32, lengths=(5, 9, 14))
    write_jsonl(d / "p.jsonl", [{"query": docs[i]["text"], "positive": docs[i + 1]["text"],
                                 "negatives": [docs[i + 2]["text"]]} for i in range(0, 96, 3)])
    prep("pairs", "--input", d / "p.jsonl", "--tokenizer", smollm2_tokenizer, "--output", d / "pairs", "--max-tokens", "32")
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted single-node 2-process run, through launch/local.sh."""
    run = tmp_path_factory.mktemp("reference") / "run"
    local("pretrain", "tiny-cpu-pretrain.yaml", f"data={data / 'compression'}", f"output_dir={run}", f"max_steps={STEPS}")
    return run


def assert_same_run(run: Path, ref: Path) -> None:
    got, want = losses(run), losses(ref)
    assert sorted(got) == list(range(1, STEPS + 1)) and got == want
    a, b = final_weights(run), final_weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_node_run(cluster, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_node")
    job = submit(cluster, "pretrain.sbatch", out, "tiny-cpu-pretrain.yaml", f"data={data / 'compression'}",
                 f"output_dir={out / 'run'}", f"max_steps={STEPS}")
    return job, out, finished(cluster, out, job)


def test_two_node_pretrain_equals_single_node_two_processes(two_node_run, reference):
    job, out, log = two_node_run
    assert f"job {job} (start 1) on 2 node(s) [n[1-2]], 1 worker(s) a node, launcher torchrun, head 127.0.0.1:" in log
    # srun no longer inherits sbatch's --cpus-per-task: the job step must ask for it
    assert "llm2comp pretrain: srun --ntasks=2 --ntasks-per-node=1 --cpus-per-task=1 " in log
    assert "training PretrainTask on 2 rank(s), ZeRO-2" in log
    assert_same_run(out / "run", reference)


def test_two_node_pretrain_with_one_srun_task_a_rank_equals_two_processes(cluster, data, reference, tmp_path):
    """LLM2COMP_LAUNCHER=srun: no torchrun; each rank is an srun task, ranks from SLURM_PROCID and the process
    group at the first node's NodeAddr (MASTER_ADDR; without it DeepSpeed falls back to MPI discovery)."""
    job = cluster.sbatch("-N", "2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                         f"--output={tmp_path / '%x-%j.out'}", str(ROOT / "launch" / "slurm" / "pretrain.sbatch"),
                         str(RECIPES / "tiny-cpu-pretrain.yaml"), "train.progress=false", f"data={data / 'compression'}",
                         f"output_dir={tmp_path / 'run'}", f"max_steps={STEPS}",
                         env={**job_env(), "LLM2COMP_LAUNCHER": "srun"}, cwd=ROOT)
    log = finished(cluster, tmp_path, job)
    assert "1 worker(s) a node, launcher srun" in log
    assert "llm2comp pretrain: srun --ntasks=2 --ntasks-per-node=1 --cpus-per-task=1 " in log
    assert "training PretrainTask on 2 rank(s), ZeRO-2" in log
    assert_same_run(tmp_path / "run", reference)


def test_usr1_checkpoints_requeues_and_resumes_as_if_uninterrupted(cluster, data, reference, tmp_path):
    run = tmp_path / "run"
    job = submit(cluster, "pretrain.sbatch", tmp_path, "tiny-cpu-pretrain.yaml", f"data={data / 'compression'}",
                 f"output_dir={run}", f"max_steps={STEPS}")
    wait_for_step(run, 3, lambda: cluster.job(job))
    assert cluster.run("scancel", "--signal=USR1", str(job)).returncode == 0
    log = finished(cluster, tmp_path, job)
    stopped = int(re.search(r"stopped on a signal at step (\d+) with its checkpoint written; requeueing", log).group(1))
    assert 3 <= stopped < STEPS
    # torchrun outlived the signal on both nodes (it ignores SIGUSR1) and saw its worker stop with 75.
    assert len(re.findall(r"failed \(exitcode: 75\) local_rank: 0", log)) == 2, log[-3000:]
    assert f"job {job} (start 2)" in log and f"resumed from {run}/checkpoints/step-{stopped:08d} at step {stopped}" in log
    assert int(cluster.job(job)["Restarts"]) == 1
    assert not list(tmp_path.glob(".llm2comp-requeue-*")) and not (ROOT / f".llm2comp-requeue-{job}").exists()
    assert_same_run(run, reference)


def _pids_of_rank(job: int, rank: int) -> list[int]:
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "trainer.cli" in (p.info["cmdline"] or []):
                env = p.environ()
                if env.get("SLURM_JOB_ID") == str(job) and env.get("RANK") == str(rank):
                    pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pids


def _complete_checkpoints_are_whole(ckpts: Path) -> list[int]:
    steps = []
    for d in sorted(ckpts.glob("step-*")):
        if (d / "COMPLETE").exists():
            for rank in (0, 1):
                assert (d / f"rng-rank{rank:05d}.pt").exists() and (d / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").exists(), d
            assert (d / "mp_rank_00_model_states.pt").exists(), d
            steps.append(int(d.name.split("-")[1]))
    latest = (ckpts / "latest").read_text().strip()
    assert (ckpts / latest / "COMPLETE").exists(), f"latest -> {latest} is not complete"
    return steps


def test_kill_9_of_a_rank_fails_clearly_and_a_resubmission_resumes_from_a_checkpoint_that_loads(cluster, data, reference, tmp_path):
    run = tmp_path / "run"
    args = ("tiny-cpu-pretrain.yaml", f"data={data / 'compression'}", f"output_dir={run}", f"max_steps={STEPS}",
            "train.save_every=3")
    job = submit(cluster, "pretrain.sbatch", tmp_path, *args)
    wait_for_step(run, 8, lambda: cluster.job(job))
    victims = _pids_of_rank(job, 1)
    assert len(victims) == 1, victims
    os.kill(victims[0], 9)
    log = finished(cluster, tmp_path, job, state="FAILED")
    assert re.search(r"rank\s*:\s*1 \(local_rank: 0\)", log) and "Signal 9 (SIGKILL)" in log, log[-3000:]
    assert f"llm2comp pretrain: job {job} failed" in log and "names the failed rank" in log
    complete = _complete_checkpoints_are_whole(run / "checkpoints")
    assert len(complete) >= 2 and max(complete) < STEPS and not (run / "final").exists()
    # And the newest one then damaged (rank 1's optimizer file cut short): the resubmission passes over it.
    newest, fallback = run / "checkpoints" / f"step-{max(complete):08d}", sorted(complete)[-2]
    damaged = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    again = submit(cluster, "pretrain.sbatch", tmp_path, *args)
    log = finished(cluster, tmp_path, again)
    assert f"checkpoint {newest} does not load ({damaged.name}:" in log, log[-3000:]
    assert f"resumed from {run}/checkpoints/step-{fallback:08d} at step {fallback}" in log
    # The steps the killed job logged after its last checkpoint are rerun: logged once, the old rows set aside.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if not r.get("eval")]
    assert steps == list(range(1, STEPS + 1)), steps
    assert_same_run(run, reference)


def test_two_node_contrastive_with_cross_device_negatives(cluster, data, two_node_run, tmp_path):
    _, stage1, _ = two_node_run
    args = [f"data={data / 'pairs'}", f"init_from={stage1 / 'run'}", "max_steps=6"]
    local("contrast", "tiny-cpu-scl.yaml", *args, f"output_dir={tmp_path / 'local'}")
    job = submit(cluster, "contrast.sbatch", tmp_path, "tiny-cpu-scl.yaml", *args, f"output_dir={tmp_path / 'run'}")
    log = finished(cluster, tmp_path, job)
    assert "training ContrastTask on 2 rank(s)" in log and "global batch 8" in log
    # Every query is scored against the positives and negatives of both nodes (tests/test_contrast.py proves the
    # 2-process loss is the global-batch loss): the two nodes reproduce it exactly.
    got, want = losses(tmp_path / "run"), losses(tmp_path / "local")
    assert sorted(got) == list(range(1, 7)) and got == want
    assert (tmp_path / "run" / "final" / "lineage.json").exists()


def test_prep_array_job_and_its_merge_equal_a_single_run(cluster, tmp_path, bpe_tokenizer):
    """Five array tasks over three chunks of input: two slices get none, are written empty, and the array and
    its merge still complete."""
    import datasets

    src = write_jsonl(tmp_path / "d.jsonl", make_docs(120, seed=6))
    out = tmp_path / "ds"
    env = {**job_env(), "LLM2COMP": f"{sys.executable} -m trainer.cli"}
    array = cluster.sbatch("--array=0-4", "--cpus-per-task=1", "--mem=500M", f"--output={tmp_path}/%x-%A_%a.log",
                           str(ROOT / "launch/slurm/prep_array.sbatch"), "compression", str(out), "--input", str(src),
                           "--tokenizer", bpe_tokenizer, "--chunk-docs", "40", env=env, cwd=tmp_path)
    marker = tmp_path / "ds.slices" / ".merge-submitted"
    deadline = time.monotonic() + 300
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    merge = int(marker.read_text().strip().split(";")[0])
    info = cluster.wait_job(merge, 300)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert info["JobState"] == "COMPLETED" and f"merge job {merge} will run after array {array}" in logs, logs
    assert json.loads((out / "manifest.json").read_text())["slice"]["merged_from"] == 5
    assert "gave no rows; written as an empty slice" in logs
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "trainer.cli", "prep", "compression", "--input", str(src), "--tokenizer",
                    bpe_tokenizer, "--chunk-docs", "40", "--output", str(single), "--no-progress", "--workers", "1"],
                   cwd=ROOT, check=True, capture_output=True)
    key = lambda r: json.dumps(r, sort_keys=True)
    assert sorted(map(key, datasets.load_from_disk(str(out)).to_list())) == sorted(
        map(key, datasets.load_from_disk(str(single)).to_list()))
