"""A stand-in for the `wandb` package in tests: records what llm2comp asks of it into $WANDB_STUB_OUT."""
import json
import os


class _Run:
    def __init__(self, kwargs):
        self.kwargs, self.logs = kwargs, []

    def log(self, values, step=None):
        self.logs.append({"step": step, **values})

    def finish(self):
        with open(os.environ["WANDB_STUB_OUT"], "w") as fh:
            json.dump({"init": self.kwargs, "mode": os.environ.get("WANDB_MODE"), "logs": self.logs}, fh, default=str)


def init(**kwargs):
    return _Run(kwargs)


class util:
    @staticmethod
    def generate_id():
        return "stub1234"
