"""SIGUSR1 (SLURM's warning before the time limit) and SIGTERM (preemption): checkpoint at the next step
boundary and exit with REQUEUE_EXIT, which the sbatch scripts turn into a requeue. Rank 0 also writes a
marker (``$LLM2COMP_REQUEUE_FILE``, else ``OUTPUT_DIR/REQUEUE``) because launchers such as torchrun replace
their workers' exit codes."""
from __future__ import annotations

import signal

REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again later"


class StopRequest:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.signum = None
        for s in signals:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None
