"""``summary.json`` of ``eval mteb`` and the table it prints.

Per task: the main score × 100 (mteb's main metric, averaged over the task's subsets, on the test split when
the task was scored on it: the MTEB leaderboard's figure; else over the splits scored), the score of every
split and subset, where the data came from (a local folder with its files' sha256, or the Hub dataset and the
revision mteb pins), and where the time went (mteb's evaluation time and phases; the texts mteb asked to
encode, the distinct ones encoded and the seconds that took). Then the average over the tasks that ran and
how many of the benchmark's (or the requested) tasks it covers.
"""
from __future__ import annotations

import statistics
from typing import Optional


def main_score(task_result) -> float:
    splits = ["test"] if "test" in task_result.scores else None
    return 100 * float(task_result.get_score(splits=splits))


def task_entry(task_result, source: dict, stats: Optional[dict], load_s: Optional[float]) -> dict:
    scores = {split: {s["hf_subset"]: 100 * float(s["main_score"]) for s in subsets}
              for split, subsets in task_result.scores.items()}
    phases: dict[str, float] = {}
    for p in task_result.evaluation_phases or []:
        if p.get("end") is not None and p.get("start") is not None:
            name = p.get("name") or "?"
            if name.startswith("Running experiment"):  # each classifier fit, inside "Scoring"
                continue
            phases[name] = phases.get(name, 0.0) + float(p["end"]) - float(p["start"])
    timing = {"evaluation_s": round(float(task_result.evaluation_time or 0.0), 2)}
    if load_s is not None:
        timing["local_load_s"] = round(load_s, 2)
    if stats:
        timing.update(texts=stats["texts"], encoded=stats["encoded"], encode_s=round(stats["encode_s"], 2))
    return {"main_score": main_score(task_result), "main_metric": task_result.task.metadata.main_score,
            "splits": scores, "data": source, "timing": {**timing, "phases_s": {k: round(v, 2) for k, v in phases.items()}}}


def aggregate(results: dict[str, dict], benchmark: Optional[str], planned: int) -> dict:
    """The average over the tasks that ran, and what it covers; then, for each of llm2comp's task lists, the
    tasks of it that ran and their average (``llm2comp-offline6``: the average every result before the
    retrieval tasks stays comparable with; ``llm2comp-paper``: how much of the paper's 14 this covers)."""
    from .mteb_benchmarks import BENCHMARKS

    ran = [r["main_score"] for r in results.values()]
    lists = {}
    for name, names in BENCHMARKS.items():
        have = [results[t]["main_score"] for t in names if t in results]
        lists[name] = {"tasks": len(names), "tasks_run": len(have), "average": statistics.mean(have) if have else None}
    return {"benchmark": benchmark, "tasks_planned": planned, "tasks_run": len(ran),
            "average": statistics.mean(ran) if ran else None, "lists": lists}


def render(summary: dict) -> str:
    lines = ["| task | main score (x100) | metric | data |", "|---|---:|---|---|"]
    for name, r in summary["results"].items():
        d = r["data"]
        where = "local" if d["source"] == "local" else f"hub {d['dataset']}@{str(d['revision'])[:8]}"
        subsets = [s for s in (d.get("subsets") or []) if s != "default"]
        label = f"{name} ({', '.join(subsets)})" if subsets else name
        lines.append(f"| {label} | {r['main_score']:.2f} | {r['main_metric']} | {where} |")
    agg = summary["aggregate"]
    what = f"of {agg['benchmark']}" if agg["benchmark"] else "requested"
    if agg["average"] is not None:
        lines.append(f"\naverage {agg['average']:.2f} over {agg['tasks_run']} of the {agg['tasks_planned']} tasks {what}")
    for name, got in (agg.get("lists") or {}).items():
        if got["tasks_run"] and name != agg["benchmark"]:
            lines.append(f"{name}: {got['tasks_run']} of its {got['tasks']} tasks ran, average {got['average']:.2f}")
    return "\n".join(lines)
