"""The bundled demo's held-out figures, wherever the docs quote them, are those of its committed reports.

Each new demo checkpoint changes ``results/demo-source-edit*.json``; the README's table, the node reference,
the checkpoint module's docstring and BENCHMARKS.md quote them by hand, and this test fails on any that was
not brought along (docs/demo-and-ablations.md section 3 lists the reports).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hieraquery_core.checkpoint import BUNDLED_DEMO_SAMPLING as S

ROOT = Path(__file__).parents[1]
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def report(name: str) -> dict:
    return json.loads((ROOT / "results" / name).read_text())


@pytest.fixture(scope="module")
def figures() -> dict[str, str]:
    """The figures as the docs print them: categories to two decimals, overall scores to three."""
    demo, noise, edit_noise = report("demo-source-edit.json"), report("demo-source-edit-refine-1.0.json"), report("demo-source-edit-edit-refine-1.0.json")
    return {"t2i": f"{demo['geneval']['overall']:.3f}", "t2i_noise": f"{noise['geneval']['overall']:.3f}",
            "edits": f"{demo['edit_accuracy']['overall']:.3f}", "edits_noise": f"{edit_noise['edit_accuracy']['overall']:.3f}",
            "demo_row": " | ".join(f"{demo['geneval'][c]:.2f}" for c in CATEGORIES),
            "noise_row": " | ".join(f"{noise['geneval'][c]:.2f}" for c in CATEGORIES),
            "consistency": f"{demo['cross_scale_consistency']:.2f}",
            "kinds": ", ".join(f"{k} {demo['edit_accuracy'][r]:.2f}" for k, r in (("restyle", "restyle"), ("recolour", "recolor"), ("remove", "remove"), ("add", "add"))),
            "kinds_noise": ", ".join(f"{edit_noise['edit_accuracy'][r]:.2f}" for r in ("restyle", "recolor", "remove", "add"))}


def test_readme_table_and_headline_quote_the_reports(figures: dict[str, str]) -> None:
    readme = (ROOT / "README.md").read_text()
    f = figures
    flat = " ".join(readme.split())
    assert f"and {f['t2i']} with one cascade per prompt as the paper samples (`results/demo-source-edit.json`)" in flat  # the headline
    assert f"edits {f['edits']} against 0.80 (met; {f['edits_noise']} with every scale of an edit painted from noise" in flat
    demo_row = next(line for line in readme.splitlines() if line.startswith("| **demo checkpoint**"))
    assert f"| {f['demo_row']} | **{f['t2i']}** | **{f['edits']}** ({f['edits_noise']}) | 1.00 | {f['consistency']} |" in demo_row
    noise_row = next(line for line in readme.splitlines() if line.startswith("| the same weights, text-to-image with every scale from noise"))
    assert f"| {f['noise_row']} | {f['t2i_noise']} |" in noise_row
    assert f"Edits by kind: {f['kinds']} (every scale from noise: {f['kinds_noise']})." in readme


@pytest.mark.parametrize("path", ["docs/nodes.md", "hieraquery_core/checkpoint.py"])
def test_node_reference_and_checkpoint_docstring_quote_the_reports(path: str, figures: dict[str, str]) -> None:
    text = " ".join((ROOT / path).read_text().split())  # docstrings wrap lines
    assert f"GenEval {figures['t2i']} against {figures['t2i_noise']}" in text or f"GenEval {figures['t2i']}, against {figures['t2i_noise']}" in text
    assert re.search(rf"edit[a-z ]*{re.escape(figures['edits'])},? against {re.escape(figures['edits_noise'])}", text), path


def test_benchmarks_sentence_is_the_one_report_writes(figures: dict[str, str]) -> None:
    """bench/report.py reads the reports when it writes; the committed CPU block must not lag behind them."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert f"held-out GenEval {figures['t2i']} against {figures['t2i_noise']} for (b)" in text


def test_readme_quotes_the_demos_sampling() -> None:
    """The library and command-line examples name the settings the demo was tuned for (BUNDLED_DEMO_SAMPLING)."""
    readme = (ROOT / "README.md").read_text()
    assert f"SamplingOptions(guidance={S['guidance']:g}, refine_strength={S['refine_strength']:g})" in readme
    assert f"`--refine-strength {S['refine_strength']:g}` enables the" in readme and f"with `--guidance {S['guidance']:g}`" in readme
    assert f"`--edit-refine-strength`, {S['edit_refine_strength']:g} by default" in readme


def test_the_self_checked_figures_quote_their_report(figures: dict[str, str]) -> None:
    """The demo's own sampling (the self-check's pick of BUNDLED_DEMO_SAMPLING's candidates) has its report, which the
    README's headline and first table row, the node reference and the checkpoint module's docstring quote."""
    from bench.report import CHECKED_REPORT

    checked = report(CHECKED_REPORT)
    assert checked["settings"]["candidates"] == S["candidates"] and checked["settings"]["refine_strength"] == S["refine_strength"]
    overall = f"{checked['geneval']['overall']:.3f}"
    readme = (ROOT / "README.md").read_text()
    flat = " ".join(readme.split())
    assert f"**text-to-image {overall} against the 0.90 target (met) as the demo samples, each image the self-check's pick of {S['candidates']} cascades" in flat
    assert f"and {figures['t2i']} with one cascade per prompt as the paper samples" in flat
    row = next(line for line in readme.splitlines() if line.startswith("| **demo checkpoint, sampled as the demo is: the self-check's best of"))
    cells = " | ".join(f"{checked['geneval'][c]:.2f}" for c in CATEGORIES)
    assert f"best of {S['candidates']} cascades**" in row and f"| {cells} | **{overall}** | **{checked['edit_accuracy']['overall']:.3f}** |" in row
    for path in ("docs/nodes.md", "hieraquery_core/checkpoint.py"):
        assert f"GenEval {overall} against {figures['t2i']}" in " ".join((ROOT / path).read_text().split()), path
