"""The reproduction's tables and plot, generated from its committed result files (never typed by hand).

    python launch/results_tables.py [--results docs/results/cpu] [--write docs/RESULTS.md] [--plot FILE.png]

Reads one JSON file per finished (variant, seed, stage) as `launch/reproduce_smollm2.py` writes them. Profile
``cpu2`` (issue 27: the comparison again, stage 1 that compresses) has its own tables and verdicts
(``render_v2``: stage 1's held-out diagnostics and which kl seeds count, stage 2's loss curve, paired
differences on the MTEB six-task average and STS-B test, issue 27's goals, the six-task average per stage as the
plot); the others (issue 14's protocol) print
markdown tables (baselines; after stage 2 and after stage 3: every seed, mean ± standard deviation; paired
per-seed differences kl − none, kl − mntp, mntp − none-mean and none − mntp, with 95 % intervals; where
issue 14's goals stand; every run with its dev score, the stage-3 learning-rate choice and its cost; where
result files carry them, the six MTEB tasks' scores and average beside STS-B) and,
with --write, replaces the text between `<!-- results:PROFILE:begin -->` and `<!-- results:PROFILE:end -->`
in that file.
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ("kl", "mntp", "nll", "rc", "none", "none-memory", "none-mean")
LABEL = {"kl": "kl (LLM2Comp)", "mntp": "mntp (LLM2Vec, mean pooling)", "nll": "nll", "rc": "rc",
         "none": "none (no stage 1)", "none-memory": "none-memory (no stage 1, memory trained in stages 2-3)",
         "none-mean": "none-mean (no stage 1, mntp's recipes, mean pooling)",
         "base-mean": "SmolLM2-135M, mean pooling", "base-last": "SmolLM2-135M, last token",
         "minilm": "all-MiniLM-L6-v2 (reference)"}


MTEB_SHORT = {"Banking77Classification": "Banking77", "EmotionClassification": "Emotion",
              "AmazonCounterfactualClassification": "AmazonCF (en)", "STS17": "STS17 (en-en)", "SICK-R": "SICK-R",
              "STSBenchmark": "STS-B", "SciFact": "SciFact (nDCG@10)", "NFCorpus": "NFCorpus (nDCG@10)"}


@functools.lru_cache(maxsize=1)
def task_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the six non-retrieval offline tasks, the two retrieval ones), as ``eval mteb``'s benchmark lists name them."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from trainer.serving.evaluation.mteb_benchmarks import OFFLINE6, RETRIEVAL

    return OFFLINE6, RETRIEVAL


def mteb_tasks(r: dict) -> dict[str, float]:
    """Every MTEB main score a result file holds: its ``mteb`` block's, and the retrieval tasks scored later into
    ``mteb_retrieval`` (a result recorded before they were part of the protocol)."""
    return {**((r.get("mteb") or {}).get("tasks") or {}), **((r.get("mteb_retrieval") or {}).get("tasks") or {})}


def average6(r: dict):
    """The six-task average every result is comparable on (a file that has not all six: its recorded average)."""
    six, _ = task_lists()
    got = mteb_tasks(r)
    if all(t in got for t in six):
        return statistics.mean(got[t] for t in six)
    return (r.get("mteb") or {}).get("average")


def average8(r: dict):
    """The eight-task average (the six and both retrieval tasks), where a result has all eight; else None."""
    six, retrieval = task_lists()
    got = mteb_tasks(r)
    return statistics.mean(got[t] for t in (*six, *retrieval)) if all(t in got for t in (*six, *retrieval)) else None


def load(directory: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as fh:
            rows.append(json.load(fh))
    return rows


def fmt(v, digits=2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"


def by(rows, stage):
    out = {}
    for r in rows:
        if r["stage"] == stage:
            out.setdefault(r["variant"], {})[r["seed"]] = r
    return out


def stage_table(rows: list[dict], stage: str) -> str:
    table = by(rows, stage)
    seeds = sorted({s for v in table.values() for s in v})
    mteb = any(r.get("mteb") for v in table.values() for r in v.values())
    head = "| variant | " + " | ".join(f"test, seed {s}" for s in seeds) + " | **test, mean ± sd** | dev, mean ± sd | effective rank, mean |"
    head += " MTEB (6 tasks) average, mean ± sd |" if mteb else ""
    lines = [head, "|---|" + "---:|" * (len(seeds) + 3 + mteb)]
    for v in [v for v in ORDER if v in table]:
        runs = table[v]
        tests = [runs[s]["test"] for s in seeds if s in runs and runs[s].get("test") is not None]
        devs = [runs[s]["dev"] for s in seeds if s in runs]
        erank = statistics.mean(runs[s]["erank"] for s in runs)
        cells = [fmt(runs[s].get("test")) if s in runs else "" for s in seeds]
        lr = {runs[s].get("lr") for s in runs} - {None}
        label = LABEL[v] + (f", lr {', '.join(sorted(lr))}" if lr else "")
        row = f"| {label} | " + " | ".join(cells) + f" | **{mean_sd(tests)}** | {mean_sd(devs)} | {erank:.1f} |"
        if mteb:
            row += f" {mean_sd([average6(r) for r in runs.values() if r.get('mteb')])} |"
        lines.append(row)
    return "\n".join(lines)


METRICS = {"test": ("STS-B test", lambda r: r.get("test")),
           "mteb": ("MTEB six-task average", average6),
           "mteb8": ("MTEB eight-task average", average8)}


def paired_stats(rows: list[dict], stage: str, a: str, b: str, metric: str = "test", seeds_of=None):
    """(seeds, per-seed differences a − b, mean, 95 % t-interval or None) over the seeds both ran and scored;
    ``seeds_of(variant)``: the seeds that count (default all)."""
    table, value = by(rows, stage), METRICS[metric][1]
    if a not in table or b not in table:
        return None
    seeds = sorted(s for s in set(table[a]) & set(table[b])
                   if value(table[a][s]) is not None and value(table[b][s]) is not None
                   and (seeds_of is None or (s in seeds_of(a) and s in seeds_of(b))))
    if not seeds:  # no seed run by both: nothing to pair
        return None
    diffs = [value(table[a][s]) - value(table[b][s]) for s in seeds]
    m, ci = statistics.mean(diffs), None
    if len(diffs) > 1:
        from scipy.stats import t

        # What the seeds can resolve: Student's t interval of the mean paired difference (n − 1 df).
        half = t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
        ci = (m - half, m + half)
    return seeds, diffs, m, ci


def paired(rows: list[dict], stage: str, a: str, b: str, metric: str = "test", seeds_of=None) -> str:
    stats = paired_stats(rows, stage, a, b, metric, seeds_of)
    if stats is None:
        return ""
    seeds, diffs, m, ci = stats
    cells = ", ".join(f"seed {s}: {d:+.2f}" for s, d in zip(seeds, diffs))
    spread = f" ± {statistics.stdev(diffs):.2f} sd, 95 % CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    return (f"- {a} − {b}, {METRICS[metric][0]}: {cells}; mean {m:+.2f}{spread}; "
            f"{a} ahead on {sum(d > 0 for d in diffs)} of {len(diffs)}")


def _tests(table: dict, variant: str) -> list[float]:
    return [r["test"] for _, r in sorted(table.get(variant, {}).items()) if r.get("test") is not None]


def _seeds(table: dict, variants, planned: dict) -> str:
    return ", ".join(f"{v} {len(_tests(table, v))} of {planned.get(v, '?')}" for v in variants if v in table or v in planned)


def goals(rows: list[dict], planned: dict[str, int]) -> str:
    """Issue 14's goals judged from the files, so that the verdict cannot go stale as seeds land.

    ``planned``: seeds the protocol runs per variant; a verdict on fewer seeds than planned says so.
    """
    s2, s3 = by(rows, "stage2"), by(rows, "stage3")
    lines = []

    def verdict(ok: bool, variants, table) -> str:
        done = all(len(_tests(table, v)) >= planned.get(v, 1) for v in variants)
        return ("**met**" if ok else "**not met**") + ("" if done else " so far") + f" (seeds: {_seeds(table, variants, planned)})"

    order = ("kl", "mntp", "nll", "rc")
    if all(_tests(s2, v) for v in order):
        means = {v: statistics.mean(_tests(s2, v)) for v in ORDER if _tests(s2, v)}
        measured = " > ".join(f"{v} {m:.2f}" for v, m in sorted(means.items(), key=lambda kv: -kv[1]))
        ok = all(means[a] > means[b] for a, b in zip(order, order[1:]))
        lines.append(f"1. After stage 2, the paper's order kl > mntp > nll > rc on the mean STS-B test: "
                     f"{verdict(ok, order, s2)}. Measured: {measured}.")
        pairs = sorted(set(s2.get("kl", {})) & set(s2.get("none", {})))
        if pairs:
            won = sum(s2["kl"][s]["test"] > s2["none"][s]["test"] for s in pairs)
            lines.append(f"   kl > none on every seed: {verdict(won == len(pairs), ('kl', 'none'), s2)}; "
                         f"kl ahead on {won} of {len(pairs)} paired seeds.")
    if _tests(s3, "kl"):
        kl = _tests(s3, "kl")
        parts = []
        for other in ("none", "mntp"):
            if _tests(s3, other):
                o = _tests(s3, other)
                gap = f"kl − {other} {statistics.mean(kl) - statistics.mean(o):+.2f} on the means"
                if len(kl) > 1 and len(o) > 1:
                    apart = statistics.mean(kl) - statistics.stdev(kl) > statistics.mean(o) + statistics.stdev(o)
                    gap += ", ±1 sd " + ("apart" if apart else "overlapping")
                parts.append(gap)
        if parts:
            ok = all(statistics.mean(kl) > statistics.mean(_tests(s3, o)) for o in ("none", "mntp") if _tests(s3, o))
            lines.append(f"2. After stage 3, kl > none and kl > mntp on the seed mean: "
                         f"{verdict(ok, ('kl', 'none', 'mntp'), s3)}; {'; '.join(parts)}.")
        base = [r for r in rows if r["stage"] == "baseline" and r["variant"].startswith("base-") and r.get("test") is not None]
        if base:
            best = max(base, key=lambda r: r["test"])
            bar = best["test"] + 15
            won = sum(t >= bar for t in kl)
            lines.append(f"3. kl after stage 3 ≥ the base model's best pooling + 15 = {best['test']:.2f} + 15 = {bar:.2f} "
                         f"on every seed: {verdict(won == len(kl), ('kl',), s3)}; "
                         f"{won} of {len(kl)} seeds ({', '.join(f'{t:.2f}' for t in kl)}).")
        ref = next((r["test"] for r in rows if r["variant"] == "minilm" and r.get("test") is not None), None)
        if ref is not None:
            lines.append(f"4. Stretch, all-MiniLM-L6-v2's {ref:.2f}: {verdict(statistics.mean(kl) >= ref, ('kl',), s3)}; "
                         f"kl's mean {statistics.mean(kl):.2f}, best seed {max(kl):.2f}.")
    return "\n".join(lines)


def baselines(rows: list[dict]) -> str:
    base = [r for r in rows if r["stage"] == "baseline"]
    mteb = any(r.get("mteb") for r in base)
    eight = any(average8(r) is not None for r in base)
    lines = ["| model | STS-B dev | STS-B test | effective rank |" + (" MTEB (6 tasks) average |" if mteb else "")
             + (" MTEB (8 tasks) average |" if eight else ""),
             "|---|---:|---:|---:|" + ("---:|" if mteb else "") + ("---:|" if eight else "")]
    for r in base:
        line = f"| {LABEL.get(r['variant'], r['variant'])} | {fmt(r['dev'])} | {fmt(r.get('test'))} | {r['erank']:.1f} |"
        if mteb:
            line += f" {fmt(average6(r))} |"
        if eight:
            line += f" {fmt(average8(r))} |"
        lines.append(line)
    return "\n".join(lines)


def mteb_table(rows: list[dict]) -> str:
    """Every final configuration with MTEB scores: per task and the average, the mean over its seeds."""
    have = [r for r in rows if r.get("mteb")]
    if not have:
        return ""
    known = [*task_lists()[0], *task_lists()[1]]
    tasks = sorted(dict.fromkeys(t for r in have for t in mteb_tasks(r)),  # the benchmark's order, retrieval last
                   key=lambda t: known.index(t) if t in known else len(known))
    eight = any(average8(r) is not None for r in have)
    groups: dict[tuple, list[dict]] = {}
    stage_order = {"baseline": 0, "stage2": 1, "stage3": 2}
    for r in have:
        groups.setdefault((stage_order.get(r["stage"], 3), r["stage"], r["variant"]), []).append(r)
    head = ("| configuration | " + " | ".join(MTEB_SHORT.get(t, t) for t in tasks) + " | **average (6 tasks)** |"
            + (" **average (8 tasks)** |" if eight else "") + " seeds |")
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2 + eight)]
    for (_, stage, variant), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][2])
                                                                            if kv[0][2] in ORDER else -1, kv[0][2])):
        label = LABEL.get(variant, variant) + ("" if stage == "baseline" else f", after stage {stage[-1]}")
        cells = []
        for t in tasks:
            vals = [mteb_tasks(r)[t] for r in runs if t in mteb_tasks(r)]
            cells.append(f"{statistics.mean(vals):.2f}" if vals else "")
        summary = lambda avgs: (mean_sd(avgs) if len(avgs) > 1 else fmt(avgs[0])) if avgs else ""  # noqa: E731
        averages = f" **{summary([average6(r) for r in runs])}** |"
        if eight:
            averages += f" **{summary([a for a in map(average8, runs) if a is not None])}** |"
        seeds = len(runs) if stage != "baseline" else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" |{averages} {seeds} |")
    return "\n".join(lines)


def training_runs(rows: list[dict]) -> list[dict]:
    """Each training run once. Under a joint stage-3 choice seed 0's chosen run has two files, its candidate's
    (``stage3-lr…``) and the selected ``stage3`` one: keep the candidate's, so no run is listed or timed twice."""
    candidates = {(r["variant"], r["seed"], r.get("lr")) for r in rows if r["stage"].startswith("stage3-lr")}
    return [r for r in rows if r["stage"] != "baseline"
            and not (r["stage"] == "stage3" and (r["variant"], r["seed"], r.get("lr")) in candidates)]


def runs_table(rows: list[dict]) -> str:
    """Every training run with its cost: wall time of the training launch, and the training loop's own time
    (``train_s``, summed over resumes) where the run recorded it."""
    lines = ["| variant | stage | seed | STS-B dev | final training loss | steps × batch | wall time (s) | training loop (s) |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    chosen = {(r["variant"], r["seed"], r.get("lr")) for r in rows if r["stage"] == "stage3" and r.get("selected")}
    for r in sorted(training_runs(rows), key=lambda r: (ORDER.index(r["variant"]), r["stage"], r["seed"])):
        label = r["stage"][len("stage"):][:1]
        if label == "3":
            label += f", lr {r.get('lr')}" + (" (chosen on dev)" if (r["variant"], r["seed"], r.get("lr")) in chosen
                                                else "")
        lines.append(f"| {r['variant']} | {label} | {r['seed']} | {fmt(r['dev'])} | {fmt(r.get('final_loss'), 3)} | "
                     f"{r['steps']} × {r['samples'] // max(1, r['steps'])} | {fmt(r.get('wall_s'), 0)} | "
                     f"{fmt(r.get('train_s'), 0)} |")
    return "\n".join(lines)


def provenance(rows: list[dict]) -> str:
    commits = sorted({r["commit"] for r in rows})
    dates = sorted({r["date"] for r in rows})
    devices = sorted({r["device"] for r in rows})
    wall = sum(r.get("wall_s") or 0 for r in training_runs(rows))
    return (f"Generated by `python launch/results_tables.py` from {len(rows)} result files; commits "
            f"{', '.join(f'`{c}`' for c in commits)}; {dates[0]} to {dates[-1]}; {', '.join(devices)}; "
            f"{wall / 3600:.1f} h of training wall time in all.")


def render(rows: list[dict], planned: dict[str, int]) -> str:
    """``planned``: seeds per variant in the plan; without it no verdict could tell final from "so far"."""
    parts = [provenance(rows), "", "Baselines:", "", baselines(rows), "",
             "After stage 2 (unsupervised: stage 1, then SimCSE-style ucl), STS-B test scored once per run:", "",
             stage_table(rows, "stage2"), ""]
    for a, b in (("kl", "none"), ("kl", "mntp"), ("mntp", "none-mean")):
        line = paired(rows, "stage2", a, b)
        if line:
            parts.append(line)
    if any(r["stage"] == "stage3" for r in rows):
        parts += ["", "After stage 3 (supervised, SNLI; learning rate chosen on seed 0's STS-B dev):", "",
                  stage_table(rows, "stage3"), ""]
        # none − mntp: LLM2Comp's pipeline with no stage 1 at all against LLM2Vec's with MNTP (memory tokens vs mean).
        for a, b in (("kl", "none"), ("kl", "mntp"), ("none", "mntp")):
            line = paired(rows, "stage3", a, b)
            if line:
                parts.append(line)
    table = mteb_table(rows)
    if table:
        parts += ["", "The MTEB tasks with local copies (`eval mteb --benchmark llm2comp-offline6`, and the retrieval "
                  "tasks of `llm2comp-offline` where a result has them; main score × 100: accuracy for classification, "
                  "Spearman for STS, nDCG@10 for retrieval), for every final configuration that has them:", "",
                  table]
    verdicts = goals(rows, planned)
    if verdicts:
        parts += ["", "Where issue 14's goals stand, computed from these files (a verdict marked so far rests on fewer "
                  "seeds than the plan runs):", "", verdicts]
    parts += ["", "Every training run (STS-B dev; test is in the tables above), with what it cost:", "", runs_table(rows)]
    return "\n".join(parts) + "\n"


# -- issue 27 (profile cpu2): the comparison again, with a stage 1 that compresses ------------------------------
def recovered_bar() -> float:
    """The held-out `recovered` a kl seed's stage 1 must reach to count: what the cpu2 profile's driver enforces."""
    from reproduce_smollm2 import PROFILES

    return PROFILES["cpu2"].stage1_bar["kl"]


def counts(r: dict | None) -> bool:
    """Whether a kl stage-1 result reached the bar (the driver's own rule)."""
    from reproduce_smollm2 import counts, recovered

    return counts(recovered(r), recovered_bar())


def counted_seeds(rows: list[dict]):
    """seeds_of(variant): every seed, except kl's whose stage 1 recovered less than recovered_bar()."""
    s1 = by(rows, "stage1")
    bad = {s for s, r in s1.get("kl", {}).items() if not counts(r)}
    return lambda v: {r["seed"] for r in rows if r["variant"] == v} - (bad if v == "kl" else set())


def stage1_table(rows: list[dict]) -> str:
    table = by(rows, "stage1")
    lines = ["| variant | seed | held out: kl_no_memory → kl_memory | recovered (0 → end) | masked-token accuracy | "
             "STS-B dev | MTEB average | counts |", "|---|---:|---|---|---:|---:|---:|---|"]
    for v in [v for v in ORDER if v in table]:
        for seed, r in sorted(table[v].items()):
            d = r.get("diagnostics") or {}
            start, end = d.get("start") or {}, d.get("end") or {}
            kl = f"{end['kl_no_memory']:.3f} → {end['kl_memory']:.3f}" if "kl_memory" in end else ""
            rec = f"{start.get('recovered', 0):.3f} → {end['recovered']:.3f}" if "recovered" in end else ""
            acc = fmt(100 * end["mntp_accuracy"]) if "mntp_accuracy" in end else ""
            ok = "" if v != "kl" else "yes" if counts(r) else f"**no** (recovered < {recovered_bar()})"
            lines.append(f"| {LABEL[v]} | {seed} | {kl} | {rec} | {acc} | {fmt(r['dev'])} | "
                         f"{fmt(average6(r))} | {ok} |")
    return "\n".join(lines)


def loss_curves(rows: list[dict], stage: str = "stage2", points=(0.05, 0.25, 0.5, 0.75, 1.0)) -> str:
    """The training loss at a few fractions of each run (logged every few steps): does stage 2 saturate?"""
    runs = [r for r in rows if r["stage"] == stage and r.get("loss_curve")]
    if not runs:
        return ""
    lines = ["| variant | seed | " + " | ".join(f"loss at {int(100 * q)} %" for q in points) + " |",
             "|---|---:|" + "---:|" * len(points)]
    for r in sorted(runs, key=lambda r: (ORDER.index(r["variant"]), r["seed"])):
        curve = r["loss_curve"]
        cells = [fmt(curve[min(len(curve) - 1, max(0, round(q * len(curve)) - 1))][1], 3) for q in points]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals_v2(rows: list[dict], planned: dict[str, int]) -> str:
    """Issue 27's goals, from the files. A kl seed whose stage 1 recovered < 0.3 does not count; a verdict on
    fewer seeds than planned says "so far", unless a goal "on every seed" already lost one; "excludes 0" is the
    95 % t-interval of the paired mean difference."""
    seeds_of = counted_seeds(rows)
    s2, s3 = by(rows, "stage2"), by(rows, "stage3")
    avg = METRICS["mteb"][1]

    def done(table, variants):
        return all(len([s for s, r in table.get(v, {}).items() if s in seeds_of(v) and avg(r) is not None])
                   >= planned.get(v, 1) for v in variants)

    def pair_verdict(stage, a, b, table):
        st = paired_stats(rows, stage, a, b, "mteb", seeds_of)
        if st is None:
            return None, f"{a} − {b}: no paired seeds yet"
        seeds, diffs, m, ci = st
        ok = all(d > 0 for d in diffs) and ci is not None and ci[0] > 0
        text = (f"{a} − {b} {m:+.2f} (" + ", ".join(f"{d:+.2f}" for d in diffs) + ")"
                + (f", 95 % CI [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ", one seed: no interval"))
        return ok, text

    def lost_a_seed(stage, a, b):
        st = paired_stats(rows, stage, a, b, "mteb", seeds_of)
        return st is not None and any(d <= 0 for d in st[1])

    def verdict(ok, variants, table, decided=False):
        """``decided``: a goal "on every seed" that a counted seed already missed; no later seed can turn it."""
        if ok is None:  # a pairing of the goal has no seeds yet, and none of the others misses
            return "**not judged yet**"
        return ("**met**" if ok else "**not met**") + ("" if decided or done(table, variants) else " so far")

    def every(results):
        """A goal made of pairings: missed if one misses, open while one has no seeds, else met."""
        oks = [ok for ok, _ in results]
        return False if False in oks else None if None in oks else True

    def pending(what):
        return f"**not judged yet**: {what}"

    g1 = "1. After stage 2, kl > none and kl > mntp on the MTEB six-task average, on every counted seed, the 95 % interval excluding 0: "
    g1b = "   kl > nll > rc (six-task average after stage 2): "
    g2 = ("2. After stage 3, kl > none, kl > none-memory and kl > mntp on the six-task average, the 95 % interval "
          "excluding 0: ")
    g3 = "3. STS-B test after stage 3, kl ≥ 75 on every counted seed: "
    lines = []
    results = [pair_verdict("stage2", "kl", o, s2) for o in ("none", "mntp")]
    if any(ok is not None for ok, _ in results):
        ok = every(results)
        decided = any(lost_a_seed("stage2", "kl", o) for o in ("none", "mntp"))
        lines.append(g1 + f"{verdict(ok, ('kl', 'none', 'mntp'), s2, decided)}; " + "; ".join(t for _, t in results) + ".")
    else:
        lines.append(g1 + pending("; ".join(t for _, t in results)) + ".")
    means = {v: statistics.mean(x) for v in ("kl", "nll", "rc")
             if (x := [avg(r) for s, r in s2.get(v, {}).items() if s in seeds_of(v) and avg(r) is not None])}
    if len(means) == 3:
        order_ok = means["kl"] > means["nll"] > means["rc"]
        lines.append(g1b + f"{verdict(order_ok, ('kl', 'nll', 'rc'), s2)}; "
                     + ", ".join(f"{v} {m:.2f}" for v, m in means.items()) + ".")
    else:
        missing = [v for v in ("kl", "nll", "rc") if v not in means]
        lines.append(g1b + pending(f"no stage-2 six-task average of {', '.join(missing)} yet") + ".")
    results = [pair_verdict("stage3", "kl", o, s3) for o in ("none", "none-memory", "mntp")]
    if any(ok is not None for ok, _ in results):
        ok = every(results)
        lines.append(g2 + f"{verdict(ok, ('kl', 'none', 'none-memory', 'mntp'), s3)}; "
                     + "; ".join(t for _, t in results) + ".")
    else:
        lines.append(g2 + pending("; ".join(t for _, t in results)) + ".")
    kl3 = [(s, r["test"]) for s, r in sorted(s3.get("kl", {}).items()) if s in seeds_of("kl") and r.get("test") is not None]
    if not kl3:
        lines.append(g3 + pending("no counted kl seed has a stage-3 test score yet") + ".")
    else:
        won = sum(t >= 75 for _, t in kl3)
        lines.append(g3 + f"{verdict(won == len(kl3), ('kl',), s3, won < len(kl3))}; " + ", ".join(f"seed {s} {t:.2f}" for s, t in kl3) + ".")
        ref = next((r for r in rows if r["variant"] == "minilm" and r.get("test") is not None), None)
        if ref is not None:
            best = max(t for _, t in kl3)
            mt = [avg(r) for s, r in s3["kl"].items() if s in seeds_of("kl") and avg(r) is not None]
            ok = best >= ref["test"] and bool(mt) and max(mt) >= (avg(ref) or 1e9)
            lines.append(f"4. Stretch, all-MiniLM-L6-v2's STS-B test {ref['test']:.2f} and six-task average "
                         f"{fmt(avg(ref))}: {verdict(ok, ('kl',), s3)}; kl's best seed {best:.2f}"
                         + (f", six-task average best {max(mt):.2f}" if mt else "") + ".")
    return "\n".join(lines)


def render_v2(rows: list[dict], planned: dict[str, int]) -> str:
    seeds_of = counted_seeds(rows)
    parts = [provenance(rows), "", "Baselines:", "", baselines(rows), ""]
    if any(r["stage"] == "stage1" for r in rows):
        parts += [f"Stage 1, held-out diagnostics (Wikipedia valid split) and the encoder after it; a kl seed counts "
                  f"toward the goals only if recovered ≥ {recovered_bar()}:", "", stage1_table(rows), ""]
    if any(r["stage"] == "stage2" for r in rows):
        parts += ["After stage 2 (unsupervised, SimCSE-style ucl), STS-B test and the six MTEB tasks scored once per run "
                  "(the tables list every seed; the paired differences and the goals leave out kl seeds that do not count):",
                  "", stage_table(rows, "stage2"), "", "Stage 2's training loss (does it saturate?):", "",
                  loss_curves(rows), ""]
        for a, b in (("kl", "none"), ("kl", "mntp"), ("kl", "nll"), ("nll", "rc")):
            for metric in ("mteb", "test"):
                line = paired(rows, "stage2", a, b, metric, seeds_of)
                if line:
                    parts.append(line)
    if any(r["stage"] == "stage3" for r in rows):
        lr = sorted({r.get("lr") for r in rows if r["stage"] == "stage3"} - {None})
        joint = next((r.get("joint_dev") for r in rows if r["stage"] == "stage3" and r.get("joint_dev")), None)
        choice = (" (mean STS-B dev of the variants' seed 0: " + ", ".join(f"lr {k}: {v:.2f}" for k, v in joint.items())
                  + ")") if joint else ""
        parts += ["", f"After stage 3 (supervised, SNLI), one learning rate for every variant, {', '.join(lr)}, chosen on "
                  f"seed 0's STS-B dev{choice}:", "", stage_table(rows, "stage3"), ""]
        for a, b in (("kl", "none"), ("kl", "none-memory"), ("kl", "mntp")):
            for metric in ("mteb", "test"):
                line = paired(rows, "stage3", a, b, metric, seeds_of)
                if line:
                    parts.append(line)
    table = mteb_table(rows)
    if table:
        parts += ["", "The MTEB tasks with local copies (`eval mteb --benchmark llm2comp-offline6`, and the retrieval "
                  "tasks of `llm2comp-offline` where a result has them; main score × 100), every configuration that "
                  "has them, mean over its seeds:", "", table]
    verdicts = goals_v2(rows, planned)
    if verdicts:
        parts += ["", "Where issue 27's goals stand, computed from these files (\"so far\": fewer counted seeds than "
                  "the plan runs; a goal \"on every seed\" that a counted seed has missed is missed for good):", "", verdicts]
    parts += ["", "Every training run (STS-B dev; test is in the tables above), with what it cost: wall time is the "
              "training command, start-up included, of the launch that finished the run (a run resumed after an "
              "interruption shows only its last launch); the training loop's time is summed over every launch:", "", runs_table(rows)]
    return "\n".join(parts) + "\n"


def plot_mteb(rows: list[dict], path: str) -> None:
    """The MTEB six-task average after each stage, per variant (mean over counted seeds, ±1 sd); stage 0 is the
    base model (mean pooling) for every variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds_of, avg = counted_seeds(rows), METRICS["mteb"][1]
    base = next((avg(r) for r in rows if r["variant"] == "base-mean" and avg(r) is not None), None)
    fig, ax = plt.subplots(figsize=(9.5, 4))
    for v in ORDER:
        xs, ys, sds = ([0], [base], [0.0]) if base is not None else ([], [], [])
        for i, stage in enumerate(("stage1", "stage2", "stage3"), 1):
            vals = [avg(r) for r in rows if r["variant"] == v and r["stage"] == stage and r["seed"] in seeds_of(v)
                    and avg(r) is not None]
            if vals:
                xs.append(i)
                ys.append(statistics.mean(vals))
                sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        if len(xs) > (1 if base is not None else 0):
            ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=LABEL[v])
    ax.set_xticks([0, 1, 2, 3], ["base model\n(mean pooling)", "stage 1", "stage 2 (ucl)", "stage 3 (scl)"])
    ax.set_ylabel("MTEB six-task average (× 100)")
    ax.set_title("The six local MTEB tasks after each stage (mean ± sd over counted seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(rows: list[dict], path: str) -> None:
    """STS-B dev after each stage against the optimizer steps so far, per variant (mean over seeds, ±1 sd)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((r["dev"] for r in rows if r["variant"] == "base-mean"), None)
    fig, ax = plt.subplots(figsize=(9.5, 4))
    for v in ORDER:
        points = {}
        for r in rows:
            if r["variant"] != v or r["stage"] not in ("stage1", "stage2", "stage3"):
                continue
            points.setdefault(r["seed"], {})[r["stage"]] = r
        if not points:
            continue
        xs, ys, sds = [0], [base], [0.0]
        for stage in ("stage1", "stage2", "stage3"):
            have = [p for p in points.values() if stage in p]
            if not have:
                continue
            steps = statistics.mean(sum(p[st]["steps"] for st in ("stage1", "stage2", "stage3")[: ("stage1", "stage2", "stage3").index(stage) + 1] if st in p) for p in have)
            devs = [p[stage]["dev"] for p in have]
            xs.append(steps)
            ys.append(statistics.mean(devs))
            sds.append(statistics.stdev(devs) if len(devs) > 1 else 0.0)
        if base is None:
            xs, ys, sds = xs[1:], ys[1:], sds[1:]
        ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=LABEL[v])
    ax.set_xlabel("optimizer steps (stage 1 → 2 → 3)")
    ax.set_ylabel("STS-B dev subset, Spearman × 100")
    ax.set_title("STS-B dev after each stage (mean ± sd over seeds)\nstep 0: the base model, mean pooling (causal, untrained)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden under it
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def planned_seeds(profile: str = "cpu") -> dict[str, int]:
    """Seeds per variant in the profile's plan (the driver sits beside this script, so it is on sys.path)."""
    from reproduce_smollm2 import PROFILES

    return {v: len(seeds) for v, (seeds, _) in PROFILES[profile].plan.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=os.path.join(ROOT, "docs", "results", "cpu"))
    p.add_argument("--write", default=None, metavar="FILE.md")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    args = p.parse_args()
    rows = load(args.results)
    if not rows:
        sys.exit(f"results_tables: no result files in {args.results}")
    profile = rows[0]["profile"]
    text = (render_v2 if profile == "cpu2" else render)(rows, planned_seeds(profile))
    print(text)
    if args.write:
        begin, end = f"<!-- results:{profile}:begin -->", f"<!-- results:{profile}:end -->"
        doc = open(args.write).read()
        if begin not in doc or end not in doc:
            sys.exit(f"results_tables: {args.write} has no {begin} ... {end} markers")
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(args.write, "w") as fh:
            fh.write(f"{head}{begin}\n{text}{end}{tail}")
    if args.plot:
        (plot_mteb if profile == "cpu2" else plot)(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
