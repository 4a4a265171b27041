"""`llm2comp` ends a process that ran distributed work with os._exit (engine.dist.exit_process), so that gloo's
worker threads cannot abort a finished rank during interpreter teardown; other commands exit normally."""
import subprocess
import sys

import pytest

from conftest import ROOT

SNIPPET = """
import atexit, sys
import trainer.cli as cli
import trainer.engine.dist as dist
atexit.register(lambda: print("teardown ran", flush=True))
dist._process_group_used = {used}
cli.main = lambda: (print("main ran"), 3)[1]
cli.console()
"""


@pytest.mark.parametrize("used", [True, False])
def test_console_skips_teardown_only_after_distributed_work(used):
    r = subprocess.run([sys.executable, "-c", SNIPPET.format(used=used)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3, r.stderr[-2000:]  # the command's own exit code either way
    assert "main ran" in r.stdout  # flushed before os._exit
    assert ("teardown ran" in r.stdout) is (not used)
