"""Test driver: run several `llm2comp` command lines that must fail, with one import of torch, transformers
and DeepSpeed for all of them instead of one per case: the libraries are imported once, then each case runs
in a forked child (a fresh process state: DeepSpeed and torch.distributed keep process-wide groups). Writes
for each case its exit code, what it printed to stderr, and the traceback of any exception that escaped
``main`` (the CLI must never show one).

    python tests/drivers/cli_cases.py CASES.json OUT.json      (CASES.json: a list of argument lists)
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import traceback

import deepspeed  # noqa: F401 - imported before forking, the point of this driver
import peft  # noqa: F401
import transformers  # noqa: F401

from trainer.cli import main


def run(argv: list[str]) -> dict:
    err = io.StringIO()
    code, tb = None, ""
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        except BaseException:  # noqa: BLE001 - recorded, the test fails on it
            tb = traceback.format_exc()
    return {"argv": argv, "code": code, "stderr": err.getvalue() + tb}


def in_child(argv: list[str]) -> dict:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    pid = os.fork()
    if pid == 0:
        try:
            result = run(argv)
        except BaseException:  # noqa: BLE001
            result = {"argv": argv, "code": None, "stderr": traceback.format_exc()}
        with open(path, "w") as fh:
            json.dump(result, fh)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    try:
        with open(path) as fh:
            return json.load(fh)
    except ValueError:
        return {"argv": argv, "code": None, "stderr": f"the case's process ended with status {status}, no result"}
    finally:
        os.unlink(path)


if __name__ == "__main__":
    cases = json.load(open(sys.argv[1]))
    with open(sys.argv[2], "w") as fh:
        json.dump([in_child(c) for c in cases], fh)
