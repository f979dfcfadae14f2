"""Markdown for BENCHMARKS.md from the results of :func:`bench.run.main`.

Each device has its own generated block between ``<!-- bench:DEVICE:begin -->`` and
``<!-- bench:DEVICE:end -->``; writing replaces only that block, so the hand-written parts of the file
(the optimisation log, notes) and the other device's rows survive a re-run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hieraquery_core.checkpoint import BUNDLED_DEMO_SAMPLING
from hieraquery_core.pipeline import refined_steps
from hieraquery_core.self_check import FIT_DRAWS, FIT_SIGMAS

from .sampling import CHECK_CANDIDATES

TARGETS = {
    "cascade_over_single": ("b/a (cascade / single-scale)", "<=", 1.4),
    "ming_over_cascade": ("c/b (Ming-style / cascade)", ">=", 2.0),
    "other_percent": ('"everything else" share of one image', "<=", 3.0),
    "percent_of_peak": ("DiT forward, % of matmul peak", ">=", 50.0),
    "alignment_overhead_percent": ("alignment loss extra step time, %", "<=", 10.0),
}
RESULTS = Path(__file__).resolve().parents[1] / "results"
"""The evaluator's committed reports of the bundled demo (docs/demo-and-ablations.md section 3)."""
CHECKED_REPORT = f"demo-source-edit-candidates-{BUNDLED_DEMO_SAMPLING['candidates']}.json"
"""Its report sampled with the self-check's candidates, as the demo is."""
TARGET_SIZE = "medium"
"""The size the issue's targets apply to on a CPU (tiny is all per-call overhead)."""


def demo_geneval(report: str) -> float:
    """Held-out GenEval overall of the bundled demo's committed report ``report`` (README's table): one cascade per prompt
    (``demo-source-edit.json``), every scale from noise (``...-refine-1.0.json``) or the self-check's pick (:data:`CHECKED_REPORT`)."""
    return json.loads((RESULTS / report).read_text())["geneval"]["overall"]


def met(value: float, op: str, bound: float) -> str:
    return "yes" if (value <= bound if op == "<=" else value >= bound) else "**no**"


def table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline(results: dict) -> dict[str, dict[str, float]]:
    """Per size, the numbers the targets are stated on."""
    out = {}
    for size, r in results["sizes"].items():
        train = {row["variant"]: row for row in r["training"]}
        out[size] = {
            **r["sampling"]["ratios"],
            "other_percent": r["sampling"]["breakdown"]["everything else"]["percent"],
            "percent_of_peak": r["efficiency"]["percent_of_peak"],
            "alignment_overhead_percent": 100.0 * (train["alignment"]["step_seconds"] / train["plain"]["step_seconds"] - 1.0),
        }
    return out


def render(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    clock = "process CPU time (one intra-op thread: time spent holding a core)" if m["clock"] == "cpu" else "wall clock"
    parts = [
        f"Command: `{results['command']}` ({s['repeats']} interleaved rounds per candidate after one warm-up, medians).",
        "",
        table(["machine", ""], [
            ["date", m["date"]],
            ["device", m.get("gpu", f"{m['cpu']}, {m['cores']} cores")],
            ["torch / diffusers / transformers / Python", f"{m['torch']} / {m['diffusers']} / {m['transformers']} / {m['python']}"],
            ["dtype, intra-op threads", f"{s['dtype']}, {m['threads']}"],
            ["clock", clock],
            ["load average (1, 5, 15 min) before / after", f"{fmt_load(m['load_before'])} / {fmt_load(m['load_after'])}"],
        ]),
    ]
    heads = headline(results)
    target_size = TARGET_SIZE if TARGET_SIZE in heads else next(iter(heads))
    note = "; the tiny size is all per-call overhead, see section 2" if "tiny" in heads and target_size != "tiny" else ""
    parts += ["", f"### Targets ({target_size} size{note})", ""]
    parts.append(table(["target", "bound", "measured", "met"], [
        [label, f"{op} {bound:g}", heads[target_size][key], met(heads[target_size][key], op, bound)] for key, (label, op, bound) in TARGETS.items()
    ]))
    parts += ["", f"### 1. Sampling cost: single-scale (a), cascade (b), Ming-style (c); {s['steps']} steps per scale, guidance 4, CFG batch 2", ""]
    rows = []
    for size, r in results["sizes"].items():
        sec, wall, fl = r["sampling"]["seconds"], r["sampling"]["wall_seconds"], r["sampling"]["flops"]
        final = "x".join(str(v) for v in r["sampling"]["sizes"][-1])
        ratios = r["sampling"]["ratios"]
        rows.append([size, final, sec["single_scale"], sec["single_scale_cached"], sec["cascade"], sec["ming"], sec["cascade_refined"], ratios["cascade_over_single"],
                     ratios["cascade_over_single_cached"], ratios["ming_over_cascade"], ratios["refined_over_single"], fl["cascade_over_single"], fl["ming_over_cascade"],
                     wall["cascade"] / wall["single_scale"], wall["ming"] / wall["cascade"]])
    parts.append(table(["size", "final px", "(a) s", "(a') s", "(b) s", "(c) s", "(b_r) s", "b/a", "b/a'", "c/b", "b_r/a", "b/a DiT FLOPs", "c/b DiT FLOPs", "b/a wall", "c/b wall"], rows))
    strength = BUNDLED_DEMO_SAMPLING["refine_strength"]
    refined, from_noise = demo_geneval("demo-source-edit.json"), demo_geneval("demo-source-edit-refine-1.0.json")
    parts.append("\n(a') is (a) inside the same caption-path cache as the pipeline (computed once, not at every step). (b_r) is the cascade sampled "
                 f"as the bundled demo is (refine strength {strength}: the finer scales start from the previous one and run "
                 f"round({strength} x steps), at least 1, of their steps: {refined_steps(s['steps'], strength)} of {s['steps']} here), not an equal-steps comparison: "
                 f"on the demo it is also the better image (held-out GenEval {refined:.3f} against {from_noise:.3f} for (b), whose final scale is painted from noise exactly as (a) paints it; both at guidance 4).")
    checked = "; ".join(f"{size} {r['sampling']['seconds']['cascade_checked']:.3g} s, {r['sampling']['ratios']['checked_over_refined']:.2f} x (b_r)"
                        for size, r in results["sizes"].items())
    parts.append(f"\n(b_s) is (b_r) with the self-check choosing among {CHECK_CANDIDATES} cascades (`SamplingOptions.candidates`, the DiT's own "
                 f"prompt-fit of each final image at {len(FIT_SIGMAS)} noise levels x {FIT_DRAWS} draws): {checked}. The demo samples "
                 f"{BUNDLED_DEMO_SAMPLING['candidates']} (held-out GenEval {demo_geneval(CHECKED_REPORT):.3f} against {refined:.3f} for one).")
    parts += ["", "### 2. Where the time of one image goes (the median encode run + the median cascade run)", ""]
    for size, r in results["sizes"].items():
        rows = [[name, v["seconds"], v["percent"], v.get("gflops", "")] for name, v in r["sampling"]["breakdown"].items()]
        parts += [f"{size}:", "", table(["component", "s", "%", "DiT GFLOP/s"], rows), ""]
    parts += ["### 3. DiT forward (full resolution, CFG batch 2) against the matmul peak", ""]
    parts.append(table(["size", "GFLOP", "s", "achieved GFLOP/s", "matmul peak GFLOP/s", "% of peak"], [
        [size, e["dit_gflop"], e["dit_seconds"], e["achieved_gflops"], f"{e['peak_gflops']:.1f} (n={e['matmul_size']}, {e['peak_product']})", e["percent_of_peak"]]
        for size, e in ((size, r["efficiency"]) for size, r in results["sizes"].items())
    ]))
    threads = [(size, t, row) for size, r in results["sizes"].items() for t, row in r.get("threads", {}).items()]
    if threads:
        parts += ["", "Same forward at each intra-op thread count, wall clock (the load from other jobs included):", ""]
        parts.append(table(["size", "threads", "DiT forward s", "matmul peak GFLOP/s", "% of peak"], [
            [size, t, row["dit_wall_seconds"], row["peak_wall_gflops"], row["percent_of_peak_wall"]] for size, t, row in threads
        ]))
    parts += ["", "### 4. Re-sampling without re-encoding (one `EncodedPrompt`, new seed or new guidance)", ""]
    parts.append(table(["size", "full run s (encode + sample)", "encode s", "re-sample, new seed s", "re-sample, new guidance s (1 run)", "full / re-sample", "MLLM calls: encode", "MLLM calls: re-sample"], [
        [size, x["full_seconds"], x["encode_seconds"], x["resample_seconds"], x["resample_guidance_seconds"], x["speedup"], x["mllm_calls_per_encode"], x["mllm_calls_per_resample"]]
        for size, x in ((size, r["sampling"]["resample"]) for size, r in results["sizes"].items())
    ]))
    parts += ["", f"### 5. Training step (training_loss + backward + AdamW), {s['train_steps']} interleaved rounds of the three variants on one model after one warm-up each, medians; memory: each variant in its own process", ""]
    rows = []
    for size, r in results["sizes"].items():
        plain = next(row for row in r["training"] if row["variant"] == "plain")
        for row in r["training"]:
            rows.append([size, row["variant"], row["batch"], row["step_seconds"], row["samples_per_second"], f"{100.0 * (row['step_seconds'] / plain['step_seconds'] - 1.0):+.1f}%",
                         row["working_memory_mb"], f"{100.0 * (row['working_memory_mb'] / plain['working_memory_mb'] - 1.0):+.0f}%" if plain["working_memory_mb"] > 0 else "n/a", row["peak_memory_mb"]])
    parts.append(table(["size", "variant", "batch", "step s", "samples/s", "time vs plain", "working memory MB", "memory vs plain", "peak MB"], rows))
    parts += ["", "The AdamW step alone, over the same parameters (plain variant):", ""]
    parts.append(table(["size", "AdamW default s", "% of the step", "AdamW fused=True s", "% of the step"], [
        [size, plain["adamw_seconds"], 100.0 * plain["adamw_seconds"] / plain["step_seconds"], plain["adamw_fused_seconds"], 100.0 * plain["adamw_fused_seconds"] / plain["step_seconds"]]
        for size, plain in ((size, next(row for row in r["training"] if row["variant"] == "plain")) for size, r in results["sizes"].items())
    ]))
    return "\n".join(parts) + "\n"


def fmt_load(load: list[float] | tuple[float, ...]) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


def write(path: Path, results: dict) -> None:
    """Replace (or append) this device's generated block of ``path``."""
    device = results["machine"]["device"]
    begin, end = f"<!-- bench:{device}:begin -->", f"<!-- bench:{device}:end -->"
    block = f"{begin}\n{render(results)}{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
