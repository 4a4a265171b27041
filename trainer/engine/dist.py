"""Rank and world from the launcher's environment (torchrun, the deepspeed launcher or srun)."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch

from data_prep.errors import UserError

_process_group_used = False  # set by init_distributed; see exit_process


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, deepspeed launcher
        return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:  # srun with one task per GPU
        world = World(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        os.environ.update(RANK=str(world.rank), WORLD_SIZE=str(world.size), LOCAL_RANK=str(world.local_rank))
        # Without MASTER_ADDR DeepSpeed falls back to MPI discovery (and fails without mpi4py): rank 0 runs on
        # the step's first node. A port per job, so two jobs sharing a node don't collide.
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = slurm_head_address(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
        os.environ.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "9500")) % 20000))
        return world
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:  # a lone process: any free port (two runs on one machine must not collide)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    return World(0, 1, 0)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, as ``scontrol show hostnames`` would print it first:
    ``gpu[007-009,12],cpu1`` -> ``gpu007``; ``rack[1-2]-n[01-04]`` -> ``rack1-n01``; ``node5`` -> ``node5``."""
    head, depth = "", 0
    for ch in nodelist.strip():  # the first entry: up to a comma outside brackets
        if ch == "," and depth == 0:
            break
        depth += ch == "["
        depth -= ch == "]"
        head += ch
    out, rest = "", head
    while "[" in rest:
        before, _, after = rest.partition("[")
        inside, _, rest = after.partition("]")
        out += before + inside.split(",")[0].split("-")[0]
    out += rest
    if not out:
        raise UserError(f"SLURM node list {nodelist!r}: no host in it (SLURM_JOB_NODELIST)")
    return out


def slurm_head_address(nodelist: str) -> str:
    """The address of the node list's first host: its ``NodeAddr`` from ``scontrol show node`` (host names
    need not resolve), or the host name itself where ``scontrol`` is absent."""
    import shutil
    import subprocess

    host = first_host(nodelist)
    if shutil.which("scontrol"):
        r = subprocess.run(["scontrol", "show", "node", host], capture_output=True, text=True, timeout=30)
        for field in r.stdout.split():
            if field.startswith("NodeAddr="):
                return field.split("=", 1)[1]
    return host


def device_index(local_rank: int, visible: int) -> int:
    """The GPU of a rank among those it sees. One GPU per task (srun --gpus-per-task=1, or a per-task
    CUDA_VISIBLE_DEVICES) shows each task only its own, as device 0, whatever SLURM_LOCALID says; a
    task that sees every GPU of the node takes the one of its local rank."""
    if visible < 1:
        raise UserError("no GPU is visible to this rank (CUDA_VISIBLE_DEVICES?)")
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise UserError(f"local rank {local_rank} but only {visible} GPUs are visible to it; give each task one GPU "
                        "(srun --gpus-per-task=1) or run one task per GPU of the node")
    return local_rank


def init_distributed(world: World) -> torch.device:
    global _process_group_used
    import deepspeed

    if torch.cuda.is_available():
        index = device_index(world.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        device, backend = torch.device("cuda", index), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    _process_group_used = True
    return device


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group after a clean finish, as PyTorch asks (every rank's pending work is done).
    Not for error paths: other ranks may be inside a collective and never arrive."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def process_group_used() -> bool:
    return _process_group_used


def exit_process(code: int):
    """End a process that has run distributed work, skipping interpreter teardown. DeepSpeed and the engine keep
    gloo process groups referenced past destroy_process_group(), and destroying their worker threads during
    teardown can abort a finished rank ("terminate called without an active exception", SIGABRT: 4 of 18
    two-rank ZeRO-3 test runs here, with or without destroy_process_group), which torchrun and SLURM report
    as a failed job (and `--dependency=afterok` never starts the next stage). Call it only once
    everything the process writes is closed: os._exit runs no atexit handlers and flushes no Python buffers."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (one small all-reduce)."""
    if not torch.distributed.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
