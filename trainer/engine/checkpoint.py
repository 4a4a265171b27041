"""Atomic, resumable checkpoints: DeepSpeed state (the trainable weights, optimizer, scheduler) + every
rank's RNG + the stage's client state (step, sampler position).

Only what training changes is written: the frozen base is excluded (DeepSpeed's
``exclude_frozen_parameters``) and read again from the model path and lineage on resume, so a 7B run's
checkpoint is megabytes of LoRA weights, memory tokens and their optimizer state, not 13.5 GB of base.

A checkpoint directory counts only once it holds ``COMPLETE``, written by rank 0 after every rank
finished writing; ``latest`` is then moved with an atomic rename. A crash or a full disk mid-write
leaves an incomplete directory that resume ignores (and the next save of that step replaces).

``resume=auto`` takes the newest complete checkpoint by its step, not by the ``latest`` pointer (a stop
between ``COMPLETE`` and the pointer's rename leaves the pointer one behind), and only one whose files all
load: rank 0 reads each file before any rank loads, and a checkpoint that fails (a truncated copy, a bad
disk) is named in one line and passed over for the next complete one, on every rank alike.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
from typing import Optional

import numpy as np
import torch

from data_prep.errors import UserError

from .dist import World, barrier

COMPLETE = "COMPLETE"
LATEST = "latest"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointWriteError(UserError):
    exit_code = 74  # EX_IOERR


class Checkpointer:
    def __init__(self, root: str, world: World, keep_last: int = 2):
        self.root, self.world, self.keep_last = root, world, keep_last
        if world.main:
            self._remove_stray_temporaries()

    def _remove_stray_temporaries(self) -> None:
        """``latest.tmp<pid>`` / ``COMPLETE.tmp<pid>`` of a writer stopped between write and rename."""
        if not os.path.isdir(self.root):
            return
        dirs = [self.root] + [os.path.join(self.root, d) for d in os.listdir(self.root)
                              if os.path.isdir(os.path.join(self.root, d))]
        for d in dirs:
            for name in os.listdir(d):
                if name.startswith((f"{LATEST}.tmp", f"{COMPLETE}.tmp")):
                    os.remove(os.path.join(d, name))

    def tag(self, step: int) -> str:
        return f"step-{step:08d}"

    def complete(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(d for d in os.listdir(self.root) if os.path.exists(os.path.join(self.root, d, COMPLETE)))

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint's directory, by step (the tags sort by it), whatever ``latest`` says."""
        done = self.complete()
        return os.path.join(self.root, done[-1]) if done else None

    def newest_loadable(self, say=print) -> Optional[str]:
        """The newest complete checkpoint whose files all load, the same on every rank: rank 0 reads them and
        names each one it passes over; the others take its choice."""
        choice = None
        if self.world.main:
            for tag in reversed(self.complete()):
                path = os.path.join(self.root, tag)
                broken = unreadable_file(path)
                if broken is None:
                    choice = path
                    break
                say(f"train.resume auto: checkpoint {path} does not load ({broken}); trying the next complete one")
        return self._from_rank0(choice)

    def unreadable(self, path: str) -> Optional[str]:
        """``unreadable_file(path)`` as rank 0 found it, on every rank (so that all stop, or none)."""
        return self._from_rank0(unreadable_file(path) if self.world.main else None)

    def _from_rank0(self, value):
        if self.world.size > 1 and torch.distributed.is_initialized():
            box = [value]
            torch.distributed.broadcast_object_list(box, src=0)
            value = box[0]
        return value

    def save(self, engine, step: int, client_state: dict) -> str:
        _only_trainables(engine)
        tag = self.tag(step)
        path = os.path.join(self.root, tag)
        if self.world.main and os.path.isdir(path):
            shutil.rmtree(path)  # an incomplete leftover of an earlier attempt at this step
        barrier()
        try:
            engine.save_checkpoint(self.root, tag=tag, client_state=client_state, save_latest=False,
                                   exclude_frozen_parameters=True)
            torch.save(rng_state(), os.path.join(path, f"rng-rank{self.world.rank:05d}.pt"))
            barrier()  # every rank's files are on disk before the checkpoint is declared complete
            if self.world.main:
                _atomic_write(os.path.join(path, COMPLETE), json.dumps({"step": step, "world_size": self.world.size}) + "\n")
                _atomic_write(os.path.join(self.root, LATEST), tag + "\n")
                for old in self.complete()[: -self.keep_last]:
                    shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        except torch.distributed.DistError as e:  # another rank failed first and the collective broke
            raise CheckpointWriteError(
                f"rank {self.world.rank}: another rank failed while checkpoint {path} was written; its error "
                f"names the cause ({str(e).strip().splitlines()[0][:160]})") from e
        except (OSError, RuntimeError) as e:
            raise CheckpointWriteError(self._write_failure(path, e)) from e
        barrier()
        return path

    def _write_failure(self, path: str, error: Exception) -> str:
        # torch.save reports a full disk as an opaque RuntimeError ("unexpected pos ..."): ask the disk itself.
        if getattr(error, "strerror", None):
            reason = error.strerror
        elif _out_of_space(self.root):
            reason = "No space left on device (or quota exceeded)"
        else:
            reason = str(error).strip().splitlines()[-1]
        free = shutil.disk_usage(self.root).free / 2**20
        latest = self.latest()
        return (f"rank {self.world.rank} could not write checkpoint {path}: {reason} ({free:,.0f} MiB free there). "
                f"It is not marked complete; the newest complete one ({latest or 'none yet'}) is intact: "
                "free space (or lower train.keep_last) and resubmit to resume from it")


    def load(self, engine, path: str) -> dict:
        with open(os.path.join(path, COMPLETE)) as fh:
            meta = json.load(fh)
        root, tag = os.path.split(path.rstrip("/"))
        self._check_trainables(engine, path)
        # Not strict: the checkpoint holds the trainable weights only; the frozen base is already loaded.
        try:
            _, client_state = engine.load_checkpoint(
                root, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True, load_module_strict=False
            )
        except RuntimeError as e:  # shapes or the optimizer's partition layout differ
            lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
            reason = next((l for l in lines if "size mismatch" in l), lines[0] if lines else type(e).__name__)
            raise UserError(f"train.resume {path}: does not fit this model and recipe: {reason[:240]}") from None
        rng_file = os.path.join(path, f"rng-rank{self.world.rank:05d}.pt")
        if meta["world_size"] == self.world.size and os.path.exists(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state or {}


    def _check_trainables(self, engine, path: str) -> None:
        """Non-strict loading must not hide a trainable weight the checkpoint lacks (another recipe's LoRA)."""
        files = sorted(f for f in os.listdir(path) if f.endswith("model_states.pt"))
        if not files:
            return
        saved = torch.load(os.path.join(path, files[0]), map_location="cpu", weights_only=False).get("module") or {}
        missing = [n for n, p in engine.module.named_parameters() if p.requires_grad and n not in saved]
        if missing:
            raise UserError(f"train.resume {path}: the checkpoint has no {missing[0]} "
                            f"({len(missing)} trainable weights missing); it was written by another model or recipe")


def unreadable_file(path: str) -> Optional[str]:
    """``FILE: reason`` for the first file of checkpoint ``path`` that does not load, else None."""
    for name in sorted(os.listdir(path)):
        if not name.endswith(".pt"):
            continue
        try:
            torch.load(os.path.join(path, name), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001  torch.load's failures on a damaged file take many types
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"{name}: {type(e).__name__}: {reason[:160]}"
    return None


def _only_trainables(engine) -> None:
    """DeepSpeed's ``exclude_frozen_parameters`` drops frozen weights by their ``named_parameters`` name, which
    lists a tied weight once: a frozen ``lm_head`` tied to the input embeddings stayed in every checkpoint
    (12.6 of a tiny run's 12.9 MB; at 7B with tied embeddings, hundreds of MB). Keep the trainable ones only."""
    if getattr(engine, "_llm2comp_trainables_only", False):
        return
    full = engine.module_state_dict

    def trainable_state_dict(*args, **kwargs):
        sd = full(*args, **kwargs)
        if kwargs.get("exclude_frozen_parameters"):
            keep = {n for n, p in engine.module.named_parameters(remove_duplicate=False) if p.requires_grad}
            for name in [n for n in sd if n not in keep]:
                del sd[name]
        return sd

    engine.module_state_dict = trainable_state_dict
    engine._llm2comp_trainables_only = True


def _out_of_space(directory: str, probe_bytes: int = 1 << 20) -> bool:
    """True when ``directory`` cannot take ``probe_bytes`` more (a full disk or an exhausted quota)."""
    probe = os.path.join(directory, f".space-probe-{os.getpid()}")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * probe_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        return False
    except OSError as e:
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
