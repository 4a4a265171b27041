"""The markdown table and the optimized / baseline ratios."""
from __future__ import annotations

from .archs import MEMORY_TOKENS


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def rows_per_batch(a) -> int:
    """Texts encoded per ucl/scl batch (as ContrastTask counts them)."""
    return 2 * a.micro_batch if a.stage == "ucl" else a.micro_batch * (2 + a.negatives)


def print_table(rows: list[dict], a, info: dict, peak: dict) -> None:
    print(f"device: {info['device_name']}\ncommit: {info['commit']}   torch {info['torch']}   date: {info['date']}")
    print(f"model: {a.model_config} ({'weights ' + a.weights if getattr(a, 'weights', None) else 'random init'}), {a.dtype}, attention {a.attention}, K={MEMORY_TOKENS}, "
          f"LoRA r16/a32 on q,v,o,gate,up,down" + (f", objective {a.objective}" if a.stage == "pretrain" else "")
          + (f", chunks of {a.chunk} of {rows_per_batch(a)} rows per batch, attention dropout {a.attention_dropout}"
             if a.stage in ("ucl", "scl") else "")
          + (", gradient checkpointing" if a.gradient_checkpointing else "")
          + (", DeepSpeed engine" if a.deepspeed else ""))
    print(f"measured matmul peak: {peak['tflops']:.3g} TFLOP/s ({peak['n']}^3 {peak['dtype']}, best of several)\n")
    cols = ["device", "model", "stage", "mode", "micro-batch", "seq", "tokens/s", "samples/s", "step ms (median)",
            "p10/p90 ms", "peak MiB", "model TFLOP/step", "achieved TFLOP/s", "peak TFLOP/s", "MFU %"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    dev = a.device + (f" ({info['device_name']})" if a.device.startswith("cuda") else "")
    for r in rows:
        ok = r["status"] == "ok"
        g = lambda key, spec: _fmt(r.get(key), spec) if ok else r["status"]
        print("| " + " | ".join([
            dev, a.model_config, r["stage"], r["label"], str(r["micro_batch"]), str(r["seq"]),
            g("tokens_per_s", ",.0f"), g("samples_per_s", ",.2f"), g("step_ms_median", ",.1f"),
            f"{r['step_ms_p10']:,.1f}/{r['step_ms_p90']:,.1f}" if ok else "-", _fmt(r.get("peak_mib"), ",.0f"),
            g("model_tflop_per_step", ".3g"), g("achieved_tflops", ".3g"), _fmt(peak["tflops"], ".3g"),
            _fmt(100 * r["mfu"], ".2f") if ok else "-",
        ]) + " |")
    how = ", ".join(dict.fromkeys(f"{r['mode']}: {r['peak_measured_by']}" for r in rows))
    print(f"\npeak memory ({how}); rates are medians of per-step rates")


def ratios(rows: list[dict]) -> dict:
    """optimized / baseline for every project variant (and, for encode, sorted / arbitrary) where both ran."""
    by = {r["mode"]: r for r in rows if r["status"] == "ok"}
    out = {}
    pairs = [(m, "baseline") for m in by if m.split(":")[0] == "project"]
    pairs += [("project-sorted", "project-arbitrary"), ("project-sorted", "baseline-arbitrary")]
    for new, old in pairs:
        if new in by and old in by:
            out[f"{new}_vs_{old}"] = {"tokens_per_s": by[new]["tokens_per_s"] / by[old]["tokens_per_s"],
                                      "peak_memory": by[new]["peak_mib"] / by[old]["peak_mib"]
                                      if by[old]["peak_mib"] > 0 else None}
    return out
