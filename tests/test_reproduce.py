"""The reproduction's protocol: stage 3 is trained once per candidate learning rate, STS-B dev chooses, and
STS-B test is scored for the chosen run only (test never informs a choice)."""
import importlib.util
import sys

from conftest import ROOT

spec = importlib.util.spec_from_file_location("reproduce_smollm2", ROOT / "launch" / "reproduce_smollm2.py")
repro = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = repro  # dataclasses look their module up there
spec.loader.exec_module(repro)


def test_stage3_chooses_on_dev_and_scores_test_once(monkeypatch):
    dev_of = {"1e-3": 40.0, "3e-4": 71.0, "1e-4": 55.0}
    trained, scored = [], []

    def train(run, stage, variant, prof, paths, init, name="", extra=(), seed=0):
        trained.append((stage, name, extra, seed, init))
        return f"export/{name}", {"steps": 60, "samples": 960, "wall_s": 1.0, "run": f"runs/{name}"}

    def score(run, model, paths, name, test, pooling=None):
        scored.append((name, test))
        lr = name.split("-lr")[1]
        return {"dev": dev_of[lr], "erank": 1.0, **({"test": 100 - dev_of[lr]} if test else {})}

    monkeypatch.setattr(repro, "train", train)
    monkeypatch.setattr(repro, "score", score)
    rows = repro.stage3(None, "kl", repro.PROFILES["cpu"], {}, "runs/kl-ucl", ("1e-3", "3e-4", "1e-4"), 7, "CPU")

    assert [t[1] for t in trained] == ["kl-scl-lr1e-3", "kl-scl-lr3e-4", "kl-scl-lr1e-4"]
    assert all(t[0] == "scl" and t[2] == (f"optim.lr={t[1].split('-lr')[1]}",) and t[3] == 7 and t[4] == "runs/kl-ucl"
               for t in trained)
    assert [s for s in scored if s[1]] == [("kl-scl-lr3e-4", True)]  # test: the dev winner, once
    chosen = [r for r in rows if r.get("selected")]
    assert [r["name"] for r in chosen] == ["kl-scl-lr3e-4"] and chosen[0]["test"] == 29.0
    assert all("test" not in r for r in rows if not r.get("selected"))


def test_stage3_without_candidates_uses_the_recipe_lr(monkeypatch):
    trained = []

    def train(run, stage, variant, prof, paths, init, name="", extra=(), seed=0):
        trained.append((name, extra))
        return f"export/{name}", {"steps": 1, "samples": 1, "wall_s": 1.0, "run": f"runs/{name}"}

    monkeypatch.setattr(repro, "train", train)
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None:
                        {"dev": 1.0, "erank": 1.0, **({"test": 2.0} if test else {})})
    rows = repro.stage3(None, "none", repro.PROFILES["full"], {}, None, (), 0, "GPU")
    assert trained == [("none-scl", ())]
    assert len(rows) == 1 and rows[0]["selected"] and rows[0]["stage"] == "3 (scl)" and rows[0]["test"] == 2.0
