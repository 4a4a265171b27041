"""The reproduction's tables and plot, generated from its committed result files (never typed by hand).

    python launch/results_tables.py [--results docs/results/cpu] [--write docs/RESULTS.md] [--plot FILE.png]

Reads one JSON file per finished (variant, seed, stage) as `launch/reproduce_smollm2.py` writes them, prints
markdown tables (baselines; after stage 2 and after stage 3: every seed, mean ± standard deviation; paired
per-seed differences kl − none, kl − mntp, mntp − none-mean and none − mntp, with 95 % intervals; where
issue 14's goals stand; every run with its dev score, the stage-3 learning-rate choice and its cost; where
result files carry them, the six MTEB tasks' scores and average beside STS-B) and,
with --write, replaces the text between `<!-- results:PROFILE:begin -->` and `<!-- results:PROFILE:end -->`
in that file.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ("kl", "mntp", "nll", "rc", "none", "none-mean")
LABEL = {"kl": "kl (LLM2Comp)", "mntp": "mntp (LLM2Vec, mean pooling)", "nll": "nll", "rc": "rc",
         "none": "none (no stage 1)", "none-mean": "none-mean (no stage 1, mntp's recipes, mean pooling)",
         "base-mean": "SmolLM2-135M, mean pooling", "base-last": "SmolLM2-135M, last token",
         "minilm": "all-MiniLM-L6-v2 (reference)"}


MTEB_SHORT = {"Banking77Classification": "Banking77", "EmotionClassification": "Emotion",
              "AmazonCounterfactualClassification": "AmazonCF (en)", "STS17": "STS17 (en-en)", "SICK-R": "SICK-R",
              "STSBenchmark": "STS-B"}


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
            row += f" {mean_sd([r['mteb']['average'] for r in runs.values() if r.get('mteb')])} |"
        lines.append(row)
    return "\n".join(lines)


def paired(rows: list[dict], stage: str, a: str, b: str) -> str:
    table = by(rows, stage)
    if a not in table or b not in table:
        return ""
    seeds = sorted(set(table[a]) & set(table[b]))
    if not seeds:  # no seed run by both: nothing to pair
        return ""
    diffs = [table[a][s]["test"] - table[b][s]["test"] for s in seeds]
    cells = ", ".join(f"seed {s}: {d:+.2f}" for s, d in zip(seeds, diffs))
    won = sum(d > 0 for d in diffs)
    m, spread = statistics.mean(diffs), ""
    if len(diffs) > 1:
        from scipy.stats import t

        # What the seeds can resolve: Student's t interval of the mean paired difference (n − 1 df).
        sd = statistics.stdev(diffs)
        half = t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
        spread = f" ± {sd:.2f} sd, 95 % CI [{m - half:+.2f}, {m + half:+.2f}]"
    return f"- {a} − {b}, STS-B test: {cells}; mean {m:+.2f}{spread}; {a} ahead on {won} of {len(diffs)}"


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
    lines = ["| model | STS-B dev | STS-B test | effective rank |" + (" MTEB (6 tasks) average |" if mteb else ""),
             "|---|---:|---:|---:|" + ("---:|" if mteb else "")]
    for r in base:
        line = f"| {LABEL.get(r['variant'], r['variant'])} | {fmt(r['dev'])} | {fmt(r.get('test'))} | {r['erank']:.1f} |"
        if mteb:
            line += f" {fmt((r.get('mteb') or {}).get('average'))} |"
        lines.append(line)
    return "\n".join(lines)


def mteb_table(rows: list[dict]) -> str:
    """Every final configuration with MTEB scores: per task and the average, the mean over its seeds."""
    have = [r for r in rows if r.get("mteb")]
    if not have:
        return ""
    tasks = list(dict.fromkeys(t for r in have for t in r["mteb"]["tasks"]))
    groups: dict[tuple, list[dict]] = {}
    stage_order = {"baseline": 0, "stage2": 1, "stage3": 2}
    for r in have:
        groups.setdefault((stage_order.get(r["stage"], 3), r["stage"], r["variant"]), []).append(r)
    head = "| configuration | " + " | ".join(MTEB_SHORT.get(t, t) for t in tasks) + " | **average** | seeds |"
    lines = [head, "|---|" + "---:|" * (len(tasks) + 2)]
    for (_, stage, variant), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][2])
                                                                            if kv[0][2] in ORDER else -1, kv[0][2])):
        label = LABEL.get(variant, variant) + ("" if stage == "baseline" else f", after stage {stage[-1]}")
        cells = []
        for t in tasks:
            vals = [r["mteb"]["tasks"][t] for r in runs if t in r["mteb"]["tasks"]]
            cells.append(f"{statistics.mean(vals):.2f}" if vals else "")
        avgs = [r["mteb"]["average"] for r in runs]
        seeds = len(runs) if stage != "baseline" else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{mean_sd(avgs) if len(avgs) > 1 else fmt(avgs[0])}** | {seeds} |")
    return "\n".join(lines)


def runs_table(rows: list[dict]) -> str:
    """Every training run with its cost: wall time of the training launch, and the training loop's own time
    (``train_s``, summed over resumes) where the run recorded it."""
    lines = ["| variant | stage | seed | STS-B dev | final training loss | steps × batch | wall time (s) | training loop (s) |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in sorted((r for r in rows if r["stage"] != "baseline"),
                    key=lambda r: (ORDER.index(r["variant"]), r["stage"], r["seed"])):
        label = r["stage"][len("stage"):][:1]
        if label == "3":
            label += f", lr {r.get('lr')}" + (" (chosen on dev)" if r.get("selected") else "")
        lines.append(f"| {r['variant']} | {label} | {r['seed']} | {fmt(r['dev'])} | {fmt(r.get('final_loss'), 3)} | "
                     f"{r['steps']} × {r['samples'] // max(1, r['steps'])} | {fmt(r.get('wall_s'), 0)} | "
                     f"{fmt(r.get('train_s'), 0)} |")
    return "\n".join(lines)


def provenance(rows: list[dict]) -> str:
    commits = sorted({r["commit"] for r in rows})
    dates = sorted({r["date"] for r in rows})
    devices = sorted({r["device"] for r in rows})
    wall = sum(r.get("wall_s") or 0 for r in rows)
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
        parts += ["", "The six MTEB tasks with local copies (`eval mteb --benchmark llm2comp-offline`; main score × 100: "
                  "accuracy for classification, Spearman for STS), for every final configuration that has them:", "",
                  table]
    verdicts = goals(rows, planned)
    if verdicts:
        parts += ["", "Where issue 14's goals stand, computed from these files (a verdict marked so far rests on fewer "
                  "seeds than the plan runs):", "", verdicts]
    parts += ["", "Every training run (STS-B dev; test is in the tables above), with what it cost:", "", runs_table(rows)]
    return "\n".join(parts) + "\n"


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


def planned_seeds() -> dict[str, int]:
    """Seeds per variant in the driver's PLAN (the driver sits beside this script, so it is on sys.path)."""
    from reproduce_smollm2 import PLAN

    return {v: len(seeds) for v, (seeds, _) in PLAN.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=os.path.join(ROOT, "docs", "results", "cpu"))
    p.add_argument("--write", default=None, metavar="FILE.md")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    args = p.parse_args()
    rows = load(args.results)
    if not rows:
        sys.exit(f"results_tables: no result files in {args.results}")
    text = render(rows, planned_seeds())
    print(text)
    if args.write:
        profile = rows[0]["profile"]
        begin, end = f"<!-- results:{profile}:begin -->", f"<!-- results:{profile}:end -->"
        doc = open(args.write).read()
        if begin not in doc or end not in doc:
            sys.exit(f"results_tables: {args.write} has no {begin} ... {end} markers")
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(args.write, "w") as fh:
            fh.write(f"{head}{begin}\n{text}{end}{tail}")
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
