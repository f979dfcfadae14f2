"""The benchmarks' smoke mode (what CI runs): every row and key is produced, with positive finite numbers.

No thresholds on time are asserted (speed lives in bench/, see BENCHMARKS.md); what is asserted is
behaviour: a re-sample never re-runs the MLLM, the breakdown accounts for the whole run, the report
keeps the hand-written parts of BENCHMARKS.md, and the GPU mode's real size has the paper's shapes.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench import report, run, sampling
from bench.breakdown import CAPTION, NESTED
from bench.configs import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # as the benchmark runs: two threads on a shared machine wait on each other

MODES = {"single_scale", "single_scale_cached", "cascade", "ming", "cascade_refined", "encode"}
VARIANTS = {"plain", "alignment", "checkpointing"}


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke() -> dict:
    return run.main(["--smoke"])


def test_smoke_run_measures_every_candidate(smoke: dict) -> None:
    assert list(smoke["sizes"]) == ["tiny"]
    r = smoke["sizes"]["tiny"]
    assert set(r["sampling"]["seconds"]) == MODES and all(positive(v) for v in r["sampling"]["seconds"].values())
    assert all(positive(v) for v in r["sampling"]["ratios"].values())
    flops = r["sampling"]["flops"]
    assert flops["single_scale_gflop"] < flops["cascade_gflop"] < flops["ming_gflop"]
    assert set(r["efficiency"]) >= {"dit_gflop", "dit_seconds", "achieved_gflops", "peak_gflops", "percent_of_peak"}
    assert all(positive(r["efficiency"][k]) for k in ("dit_gflop", "dit_seconds", "achieved_gflops", "peak_gflops", "percent_of_peak"))
    assert {row["variant"] for row in r["training"]} == VARIANTS
    for row in r["training"]:
        assert positive(row["step_seconds"]) and positive(row["samples_per_second"]) and row["working_memory_mb"] >= 0
        assert positive(row["adamw_seconds"]) and positive(row["adamw_fused_seconds"])


def test_breakdown_accounts_for_the_whole_run(smoke: dict) -> None:
    breakdown = smoke["sizes"]["tiny"]["sampling"]["breakdown"]
    scales = [name for name in breakdown if name.startswith("DiT scale")]
    assert len(scales) == 3 and {"MLLM encode", "connector", "everything else", "total"} <= set(breakdown)
    parts = sum(v["seconds"] for name, v in breakdown.items() if name not in NESTED and name != "total")
    assert parts == pytest.approx(breakdown["total"]["seconds"])
    assert all(positive(breakdown[name]["seconds"]) for name in scales + ["MLLM encode", "connector", CAPTION])
    assert breakdown[CAPTION]["seconds"] < sum(breakdown[name]["seconds"] for name in scales)
    assert all(positive(breakdown[name]["gflops"]) for name in scales)


def test_resample_reuses_the_encoding(smoke: dict) -> None:
    resample = smoke["sizes"]["tiny"]["sampling"]["resample"]
    assert resample["mllm_calls_per_encode"] == 2  # the prompt and the empty prompt (guidance)
    assert resample["mllm_calls_per_resample"] == 0  # new seed, new guidance: no MLLM call
    assert positive(resample["speedup"])


def test_report_replaces_only_its_block(smoke: dict, tmp_path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nhand-written notes\n")
    report.write(path, smoke)
    report.write(path, smoke)
    text = path.read_text()
    assert text.count("<!-- bench:cpu:begin -->") == 1 and "hand-written notes" in text
    for heading in ("### Targets", "### 1.", "### 2.", "### 3.", "### 4.", "### 5."):
        assert heading in text


def test_bfloat16_sampling_runs() -> None:
    """The GPU mode's dtype path (a bf16 model driven by float32 scheduler state), on the CPU."""
    r = sampling.measure(build_model("tiny", torch.device("cpu"), torch.bfloat16), steps=1, repeats=1)
    assert all(positive(v) for v in r["seconds"].values())


def test_real_size_has_the_paper_shapes() -> None:
    """``--sizes real`` (bench.gpu): SANA-1.6B DiT, Qwen2.5-0.5B-sized connector, 1024 px in three scales."""
    model = build_model("real", torch.device("meta"), torch.float32)
    params = {name: sum(p.numel() for p in m.parameters()) / 1e9 for name, m in (("dit", model.dit), ("connector", model.connector), ("mllm", model.mllm))}
    assert 1.55 < params["dit"] < 1.65
    assert 0.3 < params["connector"] < 0.5
    assert 3.0 < params["mllm"] < 4.0
    assert model.scale_sizes() == [(256, 256), (512, 512), (1024, 1024)]
