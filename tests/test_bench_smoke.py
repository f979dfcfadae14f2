"""The benchmarks' smoke mode (what CI runs): every row and key is produced, with positive finite numbers.

No thresholds on time are asserted (speed lives in bench/, see BENCHMARKS.md); what is asserted is
behaviour: a re-sample never re-runs the MLLM, the breakdown accounts for the whole run, the report
keeps the hand-written parts of BENCHMARKS.md, and the GPU mode's real size has the paper's shapes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import efficiency, report, run, sampling, training
from bench.breakdown import CAPTION, NESTED
from bench.configs import build_model
from hieraquery_core import cpu_linear

pytestmark = pytest.mark.usefixtures("one_thread")  # as the benchmark runs: two threads on a shared machine wait on each other

MODES = {"single_scale", "single_scale_cached", "cascade", "ming", "cascade_refined", "cascade_checked", "encode"}
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
        assert positive(row["step_seconds"]) and positive(row["samples_per_second"])
        assert positive(row["adamw_seconds"]) and positive(row["adamw_fused_seconds"])


def test_flops_count_the_packed_products_as_the_products_they_replace(monkeypatch) -> None:
    assert cpu_linear.onednn_linear()  # its one-time check (a 1x2 by 2x3 product) runs here, not inside the counters below
    layer, x = cpu_linear.CpuLinear(1024, 1024), torch.randn(2, 16, 1024)
    counts = []
    for prepack in (True, False):
        monkeypatch.setattr(cpu_linear, "PREPACK", prepack)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            layer(x)
        counts.append(counter.get_total_flops())
    assert counts == [2 * 32 * 1024 * 1024] * 2 == [efficiency.packed_linear_flops(x.shape, layer.weight.shape)] * 2
    assert layer._packed is not None  # the first product did take the packed path


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


def test_training_variants_share_one_model_and_switch_their_options() -> None:
    """The step times are interleaved on one model: each variant's step switches alignment and checkpointing itself."""
    trainer = training.Trainer("tiny", 2, torch.device("cpu"), torch.float32)
    switched = []
    for variant in ("checkpointing", "plain", "alignment"):
        before = [p.detach().clone() for p in trainer.params]
        trainer.step(variant)
        assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params)), variant  # AdamW stepped
        switched.append((trainer.model.dit.transformer.is_gradient_checkpointing, trainer.model.connector.encoder.is_gradient_checkpointing))
    assert switched == [(True, True), (False, False), (False, False)]
    aligner = list(trainer.model.aligner.parameters())
    before = [p.detach().clone() for p in aligner]
    trainer.step("plain")
    assert all(torch.equal(a, p) for a, p in zip(before, aligner))  # no alignment term: its projector gets no gradient
    trainer.step("alignment")
    assert any(not torch.equal(a, p) for a, p in zip(before, aligner))


def test_training_memory_subprocess_prints_its_row() -> None:
    """What ``measure`` runs in a fresh process for each variant: one JSON row on the last line, whose working
    memory is the step's own (tens of MB for the tiny model; in a process that already ran bigger work it reads 0)."""
    command = [sys.executable, "-m", "bench.training", "--size", "tiny", "--variant", "alignment", "--batch", "2", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(row) == {"working_memory_mb", "peak_memory_mb", "adamw_seconds", "adamw_fused_seconds"}
    assert 0 < row["working_memory_mb"] < row["peak_memory_mb"], row
    assert all(positive(row[k]) for k in ("adamw_seconds", "adamw_fused_seconds"))


def test_a_memory_subprocess_does_not_inherit_its_parents_high_water_mark() -> None:
    """Linux carries ``ru_maxrss`` over from the process a child was spawned from; the benchmark's memory children
    are spawned by a process holding a model, so they read their own high-water mark instead."""
    held = torch.ones(256, 2**20)  # 1 GiB, touched
    code = "import torch; from bench.training import peak_memory_mb; print(peak_memory_mb(torch.device('cpu')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    child = float(done.stdout.strip().splitlines()[-1])
    assert 0 < child < training.peak_memory_mb(torch.device("cpu")) - 900, child
    del held
