"""The reproduction's protocol: stage 3 is trained once per candidate learning rate, STS-B dev chooses, and
STS-B test is scored for the chosen run only (test never informs a choice)."""
import importlib.util
import json
import os
import shutil
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
        lr = name.split("-lr")[1].split("-s")[0]
        return {"dev": dev_of[lr], "erank": 1.0, **({"test": 100 - dev_of[lr]} if test else {})}

    monkeypatch.setattr(repro, "train", train)
    monkeypatch.setattr(repro, "score", score)
    rows = repro.stage3(None, "kl", repro.PROFILES["cpu"], {}, "runs/kl-ucl", ("1e-3", "3e-4", "1e-4"), 7, "CPU")

    assert [t[1] for t in trained] == ["kl-scl-lr1e-3-s7", "kl-scl-lr3e-4-s7", "kl-scl-lr1e-4-s7"]
    assert all(t[0] == "scl" and t[2] == (f"optim.lr={t[1].split('-lr')[1].split('-s')[0]}",) and t[3] == 7
               and t[4] == "runs/kl-ucl" for t in trained)
    assert [s for s in scored if s[1]] == [("kl-scl-lr3e-4-s7", True)]  # test: the dev winner, once
    chosen = [r for r in rows if r.get("selected")]
    assert [r["name"] for r in chosen] == ["kl-scl-lr3e-4-s7"] and chosen[0]["test"] == 29.0 and chosen[0]["lr"] == "3e-4"
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


def test_results_are_one_file_per_stage_and_later_seeds_use_seed0s_choice(tmp_path, monkeypatch):
    """Each finished stage is one JSON file; a (variant, seed) whose files are all there is skipped; seeds
    after 0 train stage 3 only at the learning rate seed 0's dev chose."""
    results = repro.Results(str(tmp_path), "cpu")
    trained = []

    def train(run, stage, variant, prof, paths, init, name="", extra=(), seed=0):
        trained.append(name)
        return f"export/{name}", {"steps": 5, "samples": 40, "wall_s": 1.0, "run": f"runs/{name}"}

    monkeypatch.setattr(repro, "train", train)
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None:
                        {"dev": 50.0 + ("lr3e-4" in name), "erank": 1.0, **({"test": 40.0} if test else {})})
    repro.chain(None, results, "kl", 0, repro.PROFILES["cpu"], {}, "CPU", True, ("1e-3", "3e-4"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["kl-s0-stage1.json", "kl-s0-stage2.json", "kl-s0-stage3-lr1e-3.json", "kl-s0-stage3.json"]
    stage2 = json.loads((tmp_path / "kl-s0-stage2.json").read_text())
    assert stage2["test"] == 40.0 and stage2["seed"] == 0 and stage2["commit"]  # stage 2: scored on test once
    assert "test" not in json.loads((tmp_path / "kl-s0-stage1.json").read_text()) or \
        json.loads((tmp_path / "kl-s0-stage1.json").read_text())["test"] is None
    assert json.loads((tmp_path / "kl-s0-stage3.json").read_text())["lr"] == "3e-4"
    assert results.have("kl", 0, ("stage1", "stage2", "stage3")) and not results.have("kl", 1, ("stage1",))
    assert repro.chosen_lr(results, "kl", ("1e-3", "3e-4")) == ("3e-4",)
    trained.clear()
    repro.chain(None, results, "kl", 1, repro.PROFILES["cpu"], {}, "CPU", True, repro.chosen_lr(results, "kl", ()))
    assert trained == ["kl-pretrain-s1", "kl-ucl-s1", "kl-scl-lr3e-4-s1"]
    # A chain resumed later re-reads its finished stages: their files keep the commit that measured them.
    stamped = tmp_path / "kl-s1-stage1.json"
    stamped.write_text(stamped.read_text().replace(f'"commit": "{repro.commit_id()}"', '"commit": "earlier"'))
    repro.chain(None, results, "kl", 1, repro.PROFILES["cpu"], {}, "CPU", True, ("3e-4",))
    assert json.loads(stamped.read_text())["commit"] == "earlier"


def test_result_files_name_the_cpu_and_its_bf16_instructions(tmp_path, monkeypatch):
    """The same seed trains to other weights on a CPU with other bf16 kernels, so the device a result file records
    names the CPU's model and bf16 instructions, and MTEB runs in bf16 only where they are native."""
    monkeypatch.setattr(repro.os, "cpu_count", lambda: 2)
    info = tmp_path / "cpuinfo"
    line = "processor\t: {}\nmodel name\t: Intel(R) Xeon(R) Platinum 8480C\nflags\t\t: fpu sse2 avx512f {}\n\n"
    info.write_text(line.format(0, "amx_bf16 avx512_bf16") + line.format(1, "amx_bf16 avx512_bf16"))
    assert repro.device_name(str(info)) == "CPU (2 cores, Intel(R) Xeon(R) Platinum 8480C, bf16 instructions: amx_bf16+avx512_bf16)"
    info.write_text(line.format(0, "avx2"))
    assert repro.device_name(str(info)).endswith("Platinum 8480C, bf16 instructions: none)")
    assert repro.device_name(str(tmp_path / "absent")) == "CPU (2 cores, bf16 instructions: unknown)"
    prof = repro.PROFILES["cpu2"]
    assert prof.mteb_dtype == "bfloat16"
    for flags, dtype in (({"avx2"}, "float32"), ({"avx2", "avx512_bf16"}, "bfloat16")):
        monkeypatch.setattr(repro, "cpu_info", lambda path="/proc/cpuinfo", f=flags: ("", f))
        assert repro.mteb_dtype(prof) == dtype


class FakeRunner:
    """Records the commands `train` builds and leaves what a finished run leaves (lineage, metrics, recipe)."""

    def __init__(self, out, recovered=0.4):
        self.out, self.commands, self.recovered = str(out), [], recovered  # recovered: stage 1's held-out end

    def __call__(self, *args, train=False):
        self.commands.append(args)
        if train:
            run = next(a.split("=", 1)[1] for a in args if a.startswith("output_dir="))
            os.makedirs(f"{run}/final")
            open(f"{run}/final/lineage.json", "w").write("{}")
            rows = '{"step": 60, "loss": 0.1}\n'
            if args[0] == "pretrain":  # stage 1 evaluates its held-out windows before and after
                rows = ('{"step": 0, "eval": true, "recovered": -2.5, "kl_memory": 4.0}\n' + rows
                        + f'{{"step": 60, "eval": true, "recovered": {self.recovered}, "kl_memory": 0.7}}\n')
            open(f"{run}/metrics.jsonl", "w").write(rows)
            open(f"{run}/recipe.yaml", "w").write("model: {pooling: mean}\ntrain: {micro_batch: 32}\n")
        return ""


def test_controls_without_stage1_start_stage2_from_the_base_with_their_recipes(tmp_path, monkeypatch):
    """none-mean is mntp's stage 2 without MNTP: mntp's recipe (mean pooling, dropout 0.3), no stage 1, no init."""
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None:
                        {"dev": 1.0, "erank": 1.0, **({"test": 2.0} if test else {})})
    paths = {"sentences": "data/sentences", "compression": "data/compression"}
    for variant, recipe in (("none-mean", "smollm2-135m-mntp-ucl.yaml"), ("none", "smollm2-135m-ucl.yaml")):
        run = FakeRunner(tmp_path / variant)
        results = repro.Results(str(tmp_path / variant / "r"), "cpu")
        repro.chain(run, results, variant, 1, repro.PROFILES["cpu"], paths, "CPU", False, ())
        contrast = [c for c in run.commands if c[0] == "contrast"]
        assert [c[0] for c in run.commands] == ["contrast", "export"] and len(contrast) == 1
        assert contrast[0][1] == f"--config={repro.RECIPES}/{recipe}" and "init_from=null" in contrast[0]
        assert "data=data/sentences" in contrast[0] and "seed=1" in contrast[0]
        assert sorted(os.listdir(tmp_path / variant / "r")) == [f"{variant}-s1-stage2.json"]
    assert repro.PLAN["none-mean"] == ((0, 1, 2), False)
    # Seeds after 0 of a variant without stage 3 have no seed-0 choice to look up, and need none.
    assert repro.stage3_lrs(results, "none-mean", 1, ("1e-3", "3e-4")) == ()
    assert repro.stage3_lrs(results, "none", 0, ("1e-3", "3e-4")) == ("1e-3", "3e-4")
    # A chain that stops before stage 3 (`--until stage2`) needs no seed-0 choice either: seeds 1-2 can run
    # their stages 1-2 before seed 0's stage 3 exists.
    assert not os.path.exists(results.path("none", 0, "stage3"))
    assert repro.stage3_lrs(results, "none", 1, ("1e-3", "3e-4"), until="stage2") == ()


def test_a_recorded_stage_trained_again_is_recorded_again_and_nothing_stale_is_reused(tmp_path, monkeypatch):
    """A chain resumed where its runs are gone (another machine) trains its recorded stages again. The later
    stages build on the new weights, so each such stage is recorded again, with the earlier figures kept under
    `replaces`, and an export or scores left from the earlier weights are not reused. A run that is still there
    is not trained again and keeps its record as it was."""
    dev = {"now": 10.0}
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None:
                        {"dev": dev["now"], "erank": 1.0, **({"test": 2.0} if test else {})})
    paths = {"sentences": "s", "compression": "c", "pairs": "p"}
    results = repro.Results(str(tmp_path / "r"), "cpu")
    chain = lambda run: repro.chain(run, results, "mntp", 0, repro.PROFILES["cpu"], paths, "CPU", False, ())
    chain(FakeRunner(tmp_path / "out"))
    first = {st: json.loads(open(results.path("mntp", 0, st)).read()) for st in ("stage1", "stage2")}
    assert first["stage1"]["dev"] == first["stage2"]["dev"] == 10.0 and "replaces" not in first["stage1"]

    dev["now"] = 20.0  # the runs are still there: nothing is trained, nothing is recorded again
    run = FakeRunner(tmp_path / "out")
    chain(run)
    assert [c[0] for c in run.commands if c[0] != "export"] == []
    assert all(json.loads(open(results.path("mntp", 0, st)).read()) == first[st] for st in first)

    # Another machine: the runs are gone, and an export and a score file of the earlier weights are left.
    shutil.rmtree(tmp_path / "out" / "runs")
    os.makedirs(tmp_path / "out" / "export" / "mntp-pretrain")
    open(tmp_path / "out" / "export" / "mntp-pretrain" / "modules.json", "w").write("[]")
    os.makedirs(tmp_path / "out" / "eval", exist_ok=True)
    open(tmp_path / "out" / "eval" / "mntp-pretrain.dev.json", "w").write("{}")
    run = FakeRunner(tmp_path / "out")
    chain(run)
    assert [c[0] for c in run.commands] == ["pretrain", "export", "contrast", "export"]
    assert not os.path.exists(tmp_path / "out" / "eval" / "mntp-pretrain.dev.json")
    for st in ("stage1", "stage2"):
        rec = json.loads(open(results.path("mntp", 0, st)).read())
        assert rec["dev"] == 20.0 and rec["replaces"]["dev"] == 10.0 and rec["replaces"]["commit"] == first[st]["commit"]
        assert rec["replaces"]["loss_curve"] == first[st]["loss_curve"] == [[60, 0.1]]


def test_each_variant_trains_every_stage_on_its_pipelines_recipes(tmp_path, monkeypatch):
    """mntp: LLM2Vec's recipes in every stage; kl: LLM2Comp's; the objective reaches stage 1."""
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None:
                        {"dev": 1.0, "erank": 1.0, **({"test": 2.0} if test else {})})
    paths = {"sentences": "s", "compression": "c", "pairs": "p"}
    for variant, recipes in (("mntp", ("mntp", "mntp-ucl", "mntp-scl")), ("kl", ("pretrain", "ucl", "scl"))):
        run = FakeRunner(tmp_path / variant)
        repro.chain(run, repro.Results(str(tmp_path / variant / "r"), "cpu"), variant, 0, repro.PROFILES["cpu"],
                    paths, "CPU", True, ("1e-3",))
        trained = [c for c in run.commands if c[0] in ("pretrain", "contrast")]
        assert [c[1] for c in trained] == [f"--config={repro.RECIPES}/smollm2-135m-{r}.yaml" for r in recipes]
        assert f"objective={variant}" in trained[0] and [c[2] for c in trained] == ["data=c", "data=s", "data=p"]
        stage1 = json.load(open(tmp_path / variant / "r" / f"{variant}-s0-stage1.json"))
        assert stage1["diagnostics"]["start"]["recovered"] == -2.5 and stage1["diagnostics"]["end"]["recovered"] == 0.4
        assert stage1["final_loss"] == 0.1  # the last training row, not an evaluation row
        assert json.load(open(tmp_path / variant / "r" / f"{variant}-s0-stage2.json"))["diagnostics"] is None


def results_tables():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "launch" / "results_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    return tables


def test_tables_are_generated_from_the_result_files(tmp_path):
    tables = results_tables()
    results = repro.Results(str(tmp_path / "r"), "cpu")
    for variant, tests in {"kl": [60.0, 64.0, 62.0], "none": [50.0, 55.0, 60.0], "mntp": [58.0, 61.0, 58.0],
                           "none-mean": [57.0, 63.0]}.items():
        for seed, t in enumerate(tests):
            results.write({"variant": variant, "seed": seed, "device": "CPU", "dev": t + 10, "test": t, "erank": 100.0,
                           "steps": 60, "samples": 1920, "wall_s": 10.0, "train_s": 9.0 + seed}, "stage2")
    results.write({"variant": "base-mean", "device": "CPU", "dev": 53.0, "test": 37.0, "erank": 250.0}, "baseline")
    text = tables.render(tables.load(str(tmp_path / "r")), {"kl": 3, "mntp": 3, "none": 3})
    assert "| kl (LLM2Comp) | 60.00 | 64.00 | 62.00 | **62.00 ± 2.00 (3 seeds)** |" in text
    assert "- kl − none, STS-B test: seed 0: +10.00, seed 1: +9.00, seed 2: +2.00; mean +7.00 ± 4.36 sd, 95 % CI [-3.83, +17.83]; kl ahead on 3 of 3" in text
    assert "- mntp − none-mean, STS-B test: seed 0: +1.00, seed 1: -2.00; mean -0.50 ± 2.12 sd, 95 % CI [-19.56, +18.56]; mntp ahead on 1 of 2" in text
    assert "| SmolLM2-135M, mean pooling | 53.00 | 37.00 | 250.0 |" in text
    assert "| none | 2 | 2 | 70.00 |  | 60 × 32 | 10 | 11 |" in text  # every run, with its cost
    doc = tmp_path / "RESULTS.md"
    doc.write_text("before\n<!-- results:cpu:begin -->\nold\n<!-- results:cpu:end -->\nafter\n")
    sys.argv = ["results_tables", "--results", str(tmp_path / "r"), "--write", str(doc), "--plot", str(tmp_path / "p.png")]
    assert tables.main() == 0
    written = doc.read_text()
    assert written.startswith("before\n<!-- results:cpu:begin -->\nGenerated by") and written.endswith("<!-- results:cpu:end -->\nafter\n")
    assert "old" not in written and (tmp_path / "p.png").stat().st_size > 1000


def test_goal_verdicts_are_computed_from_the_files(tmp_path):
    tables = results_tables()
    results = repro.Results(str(tmp_path / "r"), "cpu")
    stage2 = {"kl": [60.0, 64.0], "mntp": [58.0, 61.0], "nll": [50.0], "rc": [30.0], "none": [61.0, 55.0]}
    stage3 = {"kl": [80.0, 84.0, 82.0], "mntp": [70.0, 71.0, 72.0], "none": [79.0, 83.0, 80.0]}
    for stage, scores in (("stage2", stage2), ("stage3", stage3)):
        for variant, tests in scores.items():
            for seed, t in enumerate(tests):
                results.write({"variant": variant, "seed": seed, "device": "CPU", "dev": t, "test": t, "erank": 1.0,
                               "steps": 60, "samples": 960, "wall_s": 1.0}, stage)
    for variant, test in (("base-mean", 37.0), ("base-last", 31.0), ("minilm", 82.03)):
        results.write({"variant": variant, "device": "CPU", "dev": test, "test": test, "erank": 1.0}, "baseline")
    text = tables.render(tables.load(str(tmp_path / "r")), {"kl": 3, "mntp": 3, "none": 3, "nll": 1, "rc": 1})
    # Stage 2: kl 62 > mntp 59.5 > nll 50 > rc 30 holds on the means, but kl lost seed 0 to none (60 < 61).
    assert "kl > mntp > nll > rc on the mean STS-B test: **met** so far (seeds: kl 2 of 3" in text
    assert "kl > none on every seed: **not met** so far" in text and "kl ahead on 1 of 2 paired seeds" in text
    # Stage 3 has every planned seed: no "so far"; kl's band 82 ± 2 overlaps none's 80.67 ± 2.08 but not mntp's.
    assert "kl > none and kl > mntp on the seed mean: **met** (seeds: kl 3 of 3, none 3 of 3, mntp 3 of 3)" in text
    assert "kl − none +1.33 on the means, ±1 sd overlapping; kl − mntp +11.00 on the means, ±1 sd apart" in text
    assert "- none − mntp, STS-B test: seed 0: +9.00, seed 1: +12.00, seed 2: +8.00; mean +9.67 ± 2.08 sd" in text
    assert "= 37.00 + 15 = 52.00 on every seed: **met** (seeds: kl 3 of 3); 3 of 3 seeds" in text
    assert "all-MiniLM-L6-v2's 82.03: **not met** (seeds: kl 3 of 3); kl's mean 82.00, best seed 84.00" in text


class EvalRunner(FakeRunner):
    """Also leaves what `eval sts`, `analyze` and `eval mteb` write."""

    def __call__(self, *args, train=False):
        out = args[args.index("--output") + 1] if "--output" in args else None
        if args[:2] == ("eval", "sts"):
            os.makedirs(os.path.dirname(out), exist_ok=True)
            json.dump({"results": {"STSBenchmark": {"spearman": 50.0}}}, open(out, "w"))
        elif args[0] == "analyze":
            os.makedirs(out, exist_ok=True)
            json.dump({"effective_rank": 10.0}, open(f"{out}/analysis.json", "w"))
        elif args[:2] == ("eval", "mteb"):
            os.makedirs(out, exist_ok=True)
            scores = {"Banking77Classification": 60.0, "STS17": 70.0, "SICK-R": 50.0}
            json.dump({"dtype": args[args.index("--dtype") + 1], "evaluate_s": 12.0,
                       "results": {t: {"main_score": v} for t, v in scores.items()},
                       "aggregate": {"benchmark": "llm2comp-offline", "tasks_planned": 6, "tasks_run": 3,
                                     "average": 60.0}}, open(f"{out}/summary.json", "w"))
        return super().__call__(*args, train=train)


def test_final_configurations_carry_the_six_mteb_tasks(tmp_path, capsys):
    """Scoring a final configuration (the one STS-B test is scored for) also runs `eval mteb` on the six local
    tasks and records each task's score and their average; a dev-only scoring does not; result files recorded
    before get them added where the model is at hand (a baseline's, or a run's export), and say so where not."""
    run = EvalRunner(tmp_path / "out")
    paths = {"sts_dev": "d", "sts_test": "t", "analyze": "a.txt", "mteb": "/data/mteb", "mteb_dtype": "bfloat16"}
    row = repro.score(run, "export/kl-ucl", paths, "kl-ucl", test=True)
    mteb_cmds = [c for c in run.commands if c[:2] == ("eval", "mteb")]
    assert len(mteb_cmds) == 1 and mteb_cmds[0][2:8] == ("--model", "export/kl-ucl", "--benchmark", "llm2comp-offline6",
                                                       "--data-dir", "/data/mteb")
    assert "--dtype" in mteb_cmds[0] and mteb_cmds[0][mteb_cmds[0].index("--dtype") + 1] == "bfloat16"
    assert row["mteb"] == {"benchmark": "llm2comp-offline6", "tasks": {"Banking77Classification": 60.0, "STS17": 70.0,
                                                                      "SICK-R": 50.0},
                           "average": 60.0, "tasks_run": 3, "tasks_planned": 6, "dtype": "bfloat16", "eval_s": 12.0}
    run.commands.clear()
    assert "mteb" not in repro.score(run, "export/kl-pretrain", paths, "kl-pretrain", test=False)
    assert not [c for c in run.commands if c[:2] == ("eval", "mteb")]
    assert "mteb" not in repro.score(run, "export/x", {k: v for k, v in paths.items() if k != "mteb"}, "x", test=True)

    results = repro.Results(str(tmp_path / "r"), "cpu")
    results.write({"variant": "base-mean", "device": "CPU", "dev": 53.0, "test": 37.0, "erank": 250.0}, "baseline")
    for variant, seed in (("kl", 0), ("none", 1)):
        results.write({"variant": variant, "seed": seed, "device": "CPU", "dev": 60.0, "test": 58.0, "erank": 9.0,
                       "steps": 1, "samples": 1, "wall_s": 1.0}, "stage2")
    results.write({"variant": "kl", "seed": 0, "device": "CPU", "dev": 50.0, "erank": 9.0, "steps": 1, "samples": 1,
                   "wall_s": 1.0}, "stage1")
    os.makedirs(tmp_path / "out" / "export" / "none-ucl-s1")
    open(tmp_path / "out" / "export" / "none-ucl-s1" / "modules.json", "w").write("[]")
    run.commands.clear()
    repro.missing_mteb(run, results, paths, "/models/smollm2")
    models = [(c[c.index("--model") + 1], c[c.index("--pooling") + 1] if "--pooling" in c else None)
              for c in run.commands if c[:2] == ("eval", "mteb")]
    assert models == [("/models/smollm2", "mean"), (str(tmp_path / "out" / "export" / "none-ucl-s1"), None)]
    read = lambda name: json.load(open(tmp_path / "r" / name))  # noqa: E731
    assert read("base-mean-s0-baseline.json")["mteb"]["average"] == 60.0
    assert read("base-mean-s0-baseline.json")["mteb"]["commit"] and read("base-mean-s0-baseline.json")["test"] == 37.0
    assert read("none-s1-stage2.json")["mteb"]["tasks"]["STS17"] == 70.0
    assert read("kl-s0-stage2.json")["mteb"] is None and read("kl-s0-stage1.json").get("mteb") is None
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("reproduce:")]
    assert len(said) == 1 and "kl-s0-stage2.json: no export" in said[0]  # stage 1 is no final configuration

    tables = results_tables()
    text = tables.render(tables.load(str(tmp_path / "r")), {"kl": 3, "none": 3})
    assert "| model | STS-B dev | STS-B test | effective rank | MTEB (6 tasks) average |" in text
    assert "| SmolLM2-135M, mean pooling | 53.00 | 37.00 | 250.0 | 60.00 |" in text
    assert "| configuration | Banking77 | STS17 (en-en) | SICK-R | **average (6 tasks)** | seeds |" in text
    assert "| none (no stage 1), after stage 2 | 60.00 | 70.00 | 50.00 | **60.00** | 1 |" in text
    assert "| none (no stage 1) |  | 58.00 | **58.00 (1 seed)** | 60.00 (1 seed) | 9.0 | 60.00 (1 seed) |" in text
    assert "| kl (LLM2Comp) | 58.00 |  | **58.00 (1 seed)** | 60.00 (1 seed) | 9.0 |  |" in text  # none yet


def test_issue27_protocol_one_stage3_rate_for_all_variants_and_each_variants_settings(tmp_path, monkeypatch):
    """cpu2: seed 0 trains every stage-3 candidate of every variant; one rate, the best STS-B dev averaged over
    the variants, becomes every variant's stage 3 (test scored then only); later seeds train that rate alone.
    none-memory trains its memory in stages 2-3; the LLM2Comp objectives (not mntp) train E's input-embedding
    delta; stage 1 evaluates on the held-out valid split; MTEB after every stage; the loss curve is recorded."""
    prof = repro.PROFILES["cpu2"]
    dev_of = {("kl", "1e-4"): 70.0, ("kl", "3e-5"): 60.0, ("mntp", "1e-4"): 50.0, ("mntp", "3e-5"): 65.0,
              ("none", "1e-4"): 55.0, ("none", "3e-5"): 54.0, ("none-memory", "1e-4"): 52.0, ("none-memory", "3e-5"): 51.0}
    scored = []

    def score(run, model, paths, name, test, pooling=None, mteb=None):
        scored.append((name, test, mteb))
        variant, lr = (name.split("-scl-lr")[0], name.split("-scl-lr")[1].split("-s")[0]) if "-scl-lr" in name else (None, None)
        return {"dev": dev_of.get((variant, lr), 40.0), "erank": 1.0, **({"test": 80.0} if test else {}),
                **({"mteb": {"average": 50.0}} if (test if mteb is None else mteb) else {})}

    monkeypatch.setattr(repro, "score", score)
    paths = {"sentences": "s", "compression": "c", "pairs": "p", "valid": "v"}
    run = FakeRunner(tmp_path / "runs")
    results = repro.Results(str(tmp_path / "r"), "cpu2")
    lrs = prof.scl_lrs
    for variant in ("kl", "mntp", "none", "none-memory"):
        repro.chain(run, results, variant, 0, prof, paths, "CPU", True, repro.stage3_lrs(results, variant, 0, lrs, prof.plan))
        assert not os.path.exists(results.path(variant, 0, "stage3"))  # not chosen yet: one rate for all
    # mean dev: 1e-4 (70 + 50 + 55 + 52) / 4 = 56.75 against 3e-5 57.5: 3e-5 for every variant, kl's best included
    assert repro.choose_joint(run, results, prof, paths, lrs) == "3e-5"
    for variant in ("kl", "mntp", "none", "none-memory"):
        rec = json.load(open(results.path(variant, 0, "stage3")))
        assert rec["lr"] == "3e-5" and rec["selected"] and rec["test"] == 80.0 and rec["joint_dev"] == {"1e-4": 56.75, "3e-5": 57.5}
    assert [n for n, test, _ in scored if test and "-scl-" in n] == [f"{v}-scl-lr3e-5" for v in ("kl", "mntp", "none", "none-memory")]
    assert repro.stage3_lrs(results, "none-memory", 2, lrs, prof.plan) == ("3e-5",)
    commands = {c[0] + ":" + next(a.split("=", 1)[1].rsplit("/", 1)[-1] for a in c if a.startswith("output_dir=")): c
                for c in run.commands if c[0] in ("pretrain", "contrast")}
    assert "model.train_input_embeddings=true" in commands["pretrain:kl-pretrain"]
    assert "model.train_input_embeddings=true" not in commands["pretrain:mntp-pretrain"]
    assert all("eval.path=v" in c for k, c in commands.items() if k.startswith("pretrain"))
    memory = {k: "model.train_memory=true" in c for k, c in commands.items() if k.startswith("contrast")}
    assert memory["contrast:none-memory-ucl"] and memory["contrast:none-memory-scl-lr1e-4"]
    assert not memory["contrast:none-ucl"] and not memory["contrast:kl-ucl"]
    assert ("kl-pretrain", False, True) in scored  # MTEB after stage 1 too (the plot of every stage)
    stage2 = json.load(open(results.path("kl", 0, "stage2")))
    assert stage2["loss_curve"] == [[60, 0.1]] and stage2["mteb"] == {"average": 50.0}


def test_issue27_goals_count_only_kl_seeds_whose_stage1_compresses(tmp_path):
    tables = results_tables()
    results = repro.Results(str(tmp_path / "r"), "cpu2")
    avgs = {"kl": [60.0, 61.0, 59.0], "none": [55.0, 56.0, 60.0], "mntp": [54.0, 55.0, 58.0]}
    for variant, values in avgs.items():
        for seed, a in enumerate(values):
            if variant == "kl":
                results.write({"variant": "kl", "seed": seed, "stage": "1 (stage 1)", "dev": 20.0, "erank": 1.0, "device": "CPU", "steps": 200, "samples": 1600,
                               "diagnostics": {"start": {"recovered": -2.0},
                                               "end": {"recovered": 0.35 if seed < 2 else 0.2, "kl_memory": 0.8,
                                                       "kl_no_memory": 1.2}}}, "stage1")
            results.write({"variant": variant, "seed": seed, "stage": "2 (ucl)", "dev": 50.0, "test": 40.0 + a / 10,
                           "erank": 1.0, "device": "CPU", "steps": 100, "samples": 6400, "mteb": {"average": a, "tasks": {"STS17": a}},
                           "loss_curve": [[5, 3.0], [100, 0.6]]}, "stage2")
    rows = tables.load(str(tmp_path / "r"))
    text = tables.render_v2(rows, {"kl": 3, "none": 3, "mntp": 3, "nll": 1, "rc": 1, "none-memory": 3})
    # seed 2 of kl does not count (recovered 0.2 < 0.3): its 59 against none's 60 is left out of the pairing
    assert "| kl (LLM2Comp) | 2 | 1.200 → 0.800 | -2.000 → 0.200 |" in text and "**no** (recovered < 0.3)" in text
    assert "- kl − none, MTEB six-task average: seed 0: +5.00, seed 1: +5.00; mean +5.00" in text
    assert "1. After stage 2, kl > none and kl > mntp" in text and "**met** so far" in text  # 2 of 3 kl seeds count
    assert "| kl | 0 | 3.000 |" in text  # the loss curve's first point


def test_issue27_a_kl_seed_whose_stage1_misses_the_bar_stops_after_stage1(tmp_path, monkeypatch):
    """cpu2: a kl seed whose held-out recovered < 0.3 does not count, so no stage 2-3 compute goes into it; a
    seed at the bar goes on; mntp (no bar of its own) runs the seed only when kl's counts."""
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None, mteb=None:
                        {"dev": 1.0, "erank": 1.0, **({"test": 2.0} if test else {})})
    prof, paths = repro.PROFILES["cpu2"], {"sentences": "s", "compression": "c", "pairs": "p", "valid": "v"}
    assert prof.stage1_bar == {"kl": repro.RECOVERED_BAR} == {"kl": 0.3}
    for kl_recovered, kl_stages in ((0.186, ["pretrain"]), (0.3, ["pretrain", "contrast"])):
        results = repro.Results(str(tmp_path / f"{kl_recovered}" / "r"), "cpu2")
        for variant, recovered, stages in (("kl", kl_recovered, kl_stages), ("mntp", 0.0, ["pretrain", "contrast"])):
            run = FakeRunner(tmp_path / f"{kl_recovered}" / variant, recovered=recovered)
            repro.chain(run, results, variant, 1, prof, paths, "CPU", True, (), until="stage2")
            if variant == "mntp" and kl_recovered < 0.3:  # controls run only the seeds that count for kl
                stages = []
            assert [c[0] for c in run.commands if c[0] != "export"] == stages, (variant, recovered)
            assert os.path.exists(results.path(variant, 1, "stage1")) == bool(stages)
            assert os.path.exists(results.path(variant, 1, "stage2")) == (len(stages) == 2)


def test_issue27_controls_run_only_the_seeds_that_count_for_kl(tmp_path, monkeypatch, capsys):
    """cpu2: mntp, none, none-memory, nll and rc run seed S only once kl seed S's stage 1 is recorded at the bar,
    so that no control compute goes into a seed with nothing to pair; kl itself is never held back."""
    monkeypatch.setattr(repro, "score", lambda run, model, paths, name, test, pooling=None, mteb=None:
                        {"dev": 1.0, "erank": 1.0, **({"test": 2.0} if test else {})})
    prof, paths = repro.PROFILES["cpu2"], {"sentences": "s", "compression": "c", "pairs": "p", "valid": "v"}
    results = repro.Results(str(tmp_path / "r"), "cpu2")
    for seed, recovered in ((1, 0.186), (3, 0.31)):
        repro.chain(FakeRunner(tmp_path / "kl", recovered=recovered), results, "kl", seed, prof, paths, "CPU", True, (),
                    until="stage1")
    for variant in ("mntp", "none", "none-memory", "nll", "rc"):
        for seed, runs in ((1, False), (2, False), (3, True)):
            run = FakeRunner(tmp_path / variant)
            assert bool(repro.chain(run, results, variant, seed, prof, paths, "CPU", True, (), until="stage2")) == runs
            assert bool(run.commands) == runs and results.have(variant, seed, ("stage2",)) == runs, (variant, seed)
    out = capsys.readouterr().out
    assert "none seed 1: skipped: kl seed 1 does not count (stage 1 recovered 0.186 < 0.3)" in out
    assert "none seed 2: skipped: kl seed 2 has no stage-1 result yet" in out
    assert repro.unpaired(results, repro.PROFILES["cpu"], "none", 1) is None  # no bar, no pairing rule
    assert [repro.counts(g, 0.3) for g in (None, 0.299, 0.3, 0.31)] == [False, False, True, True]


def test_issue27_every_goal_has_a_line_and_the_jointly_chosen_run_is_listed_once(tmp_path):
    """A goal with nothing to judge yet says so (it is not left out), and seed 0's chosen stage-3 run, written
    both as its candidate and as the selected file, is one run in the runs table and in the wall-time total."""
    tables = results_tables()
    results = repro.Results(str(tmp_path / "r"), "cpu2")
    base = {"seed": 0, "device": "CPU", "erank": 1.0, "steps": 100, "samples": 1600, "wall_s": 1800.0}
    results.write({**base, "variant": "kl", "dev": 20.0, "diagnostics": {"end": {"recovered": 0.35}}}, "stage1")
    for variant in ("kl", "none"):
        results.write({**base, "variant": variant, "dev": 30.0, "test": 25.0, "mteb": {"average": 40.0, "tasks": {"STS17": 40.0}}}, "stage2")
    for lr, dev in (("1e-4", 79.0), ("3e-5", 60.0)):
        results.write({**base, "variant": "kl", "dev": dev, "lr": lr}, f"stage3-lr{lr}")
    results.write({**base, "variant": "kl", "dev": 79.0, "test": 70.0, "lr": "1e-4", "selected": True}, "stage3")
    text = tables.render_v2(tables.load(str(tmp_path / "r")), {"kl": 3, "none": 3, "mntp": 3, "nll": 1, "rc": 1})
    assert "kl − mntp: no paired seeds yet" in text and "kl − none +0.00" in text
    assert "kl > nll > rc (six-task average after stage 2): **not judged yet**: no stage-2 six-task average of nll, rc yet" in text
    assert "2. After stage 3, kl > none, kl > none-memory and kl > mntp" in text and "**not judged yet**: kl − none: no paired" in text
    assert "3. STS-B test after stage 3, kl ≥ 75 on every counted seed: **not met**; seed 0 70.00." in text
    stage3_runs = [line for line in text.splitlines() if line.startswith("| kl | 3")]
    assert stage3_runs == ["| kl | 3, lr 1e-4 (chosen on dev) | 0 | 79.00 |  | 100 × 16 | 1800 |  |",
                           "| kl | 3, lr 3e-5 | 0 | 60.00 |  | 100 × 16 | 1800 |  |"]
    assert "2.5 h of training wall time in all" in text  # 5 runs × 1,800 s: the chosen run counted once


def test_issue27_a_goal_with_a_pairing_still_missing_is_not_judged_not_missed(tmp_path):
    """kl beats none on every counted seed, but mntp has no stage 2 yet: goal 1 is open, not missed."""
    tables = results_tables()
    results = repro.Results(str(tmp_path / "r"), "cpu2")
    base = {"device": "CPU", "erank": 1.0, "steps": 100, "samples": 6400, "dev": 30.0, "test": 25.0}
    for seed, gain in enumerate((2.0, 3.0, 2.5)):
        results.write({**base, "seed": seed, "variant": "kl", "diagnostics": {"end": {"recovered": 0.35}}}, "stage1")
        for variant, a in (("kl", 40.0 + gain), ("none", 40.0)):
            results.write({**base, "seed": seed, "variant": variant, "mteb": {"average": a, "tasks": {"STS17": a}}}, "stage2")
    text = tables.render_v2(tables.load(str(tmp_path / "r")), {"kl": 3, "none": 3, "mntp": 3, "nll": 1, "rc": 1})
    goal1 = next(line for line in text.splitlines() if line.startswith("1. After stage 2"))
    assert "**not judged yet**; kl − none +2.50 (+2.00, +3.00, +2.50), 95 % CI [" in goal1
    assert goal1.endswith("kl − mntp: no paired seeds yet.") and "not met" not in goal1


def test_issue27_a_goal_on_every_seed_that_a_seed_missed_is_missed_for_good(tmp_path):
    """Goal 1 asks kl > mntp on every counted seed: once one counted seed has kl behind, no later seed can turn
    the verdict, so it is final ("not met"), while a goal still winning on its seeds so far stays "so far"."""
    tables = results_tables()
    base = {"device": "CPU", "erank": 1.0, "steps": 100, "samples": 6400, "dev": 30.0, "test": 25.0}
    plan = {"kl": 3, "none": 3, "mntp": 3, "nll": 1, "rc": 1}
    for mntp_gain, verdict in ((+1.0, "**not met**; "), (-1.0, "**not met** so far; ")):  # mntp − kl on seed 1
        results = repro.Results(str(tmp_path / f"{mntp_gain}"), "cpu2")
        for seed, gain in ((0, 2.0), (1, 3.0)):  # two of three seeds in: kl's lead over none alone has a wide CI
            results.write({**base, "seed": seed, "variant": "kl", "diagnostics": {"end": {"recovered": 0.35}}}, "stage1")
            for variant, a in (("kl", 40.0 + gain), ("none", 40.0), ("mntp", 40.0 + (gain + mntp_gain if seed else 0.0))):
                results.write({**base, "seed": seed, "variant": variant, "mteb": {"average": a, "tasks": {"STS17": a}}}, "stage2")
        text = tables.render_v2(tables.load(str(tmp_path / f"{mntp_gain}")), plan)
        goal1 = next(line for line in text.splitlines() if line.startswith("1. After stage 2"))
        assert verdict in goal1, (mntp_gain, goal1)


class RetrievalRunner(FakeRunner):
    """`eval mteb --tasks T` leaves a summary with T's score (SciFact 60, NFCorpus 30) and its max length."""

    def __call__(self, *args, train=False):
        if args[:2] == ("eval", "mteb"):
            out, task = args[args.index("--output") + 1], args[args.index("--tasks") + 1]
            os.makedirs(out, exist_ok=True)
            json.dump({"dtype": "float32", "max_length": 512, "results": {task: {
                "main_score": {"SciFact": 60.0, "NFCorpus": 30.0}[task], "timing": {"encode_s": 5.0}}}},
                open(f"{out}/summary.json", "w"))
        return super().__call__(*args, train=train)


def test_baselines_get_the_retrieval_tasks_task_by_task_and_the_tables_both_averages(tmp_path):
    """`--retrieval`: each baseline's file gains SciFact and NFCorpus beside its six tasks, one task at a time (a
    rerun scores nothing twice); the tables then show both tasks and the eight-task average beside the six-task one."""
    results = repro.Results(str(tmp_path / "r"), "cpu2")
    six = {t: 50.0 for t in ("Banking77Classification", "EmotionClassification", "AmazonCounterfactualClassification",
                             "STS17", "SICK-R", "STSBenchmark")}
    results.write({"variant": "base-mean", "device": "CPU", "dev": 53.0, "test": 37.0, "erank": 250.0,
                   "mteb": {"benchmark": "llm2comp-offline", "tasks": six, "average": 50.0}}, "baseline")
    run = RetrievalRunner(tmp_path / "out")
    repro.retrieval_scores(run, results, {"mteb": "/data/mteb", "mteb_dtype": "float32"}, "/models/smollm2", "CPU X")
    cmds = [c for c in run.commands if c[:2] == ("eval", "mteb")]
    assert [c[c.index("--tasks") + 1] for c in cmds] == ["NFCorpus", "SciFact"]
    assert all(c[c.index("--pooling") + 1] == "mean" for c in cmds)
    rec = json.load(open(tmp_path / "r" / "base-mean-s0-baseline.json"))
    assert rec["mteb"]["tasks"] == six and rec["mteb_retrieval"]["tasks"] == {"NFCorpus": 30.0, "SciFact": 60.0}
    assert rec["mteb_retrieval"]["max_length"] == 512 and rec["mteb_retrieval"]["device"] == "CPU X"
    run.commands.clear()
    repro.retrieval_scores(run, results, {"mteb": "/data/mteb"}, "/models/smollm2", "CPU X")
    assert not run.commands  # both recorded: nothing scored again

    tables = results_tables()
    rows = tables.load(str(tmp_path / "r"))
    assert tables.average6(rows[0]) == 50.0 and tables.average8(rows[0]) == (6 * 50 + 60 + 30) / 8
    text = tables.mteb_table(rows)
    assert "| SciFact (nDCG@10) | NFCorpus (nDCG@10) | **average (6 tasks)** | **average (8 tasks)** |" in text
    assert "| 60.00 | 30.00 | **50.00** | **48.75** |" in text
    assert "MTEB (8 tasks) average |" in tables.baselines(rows)
