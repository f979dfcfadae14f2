"""Training data, buckets, sampler, optimizer and schedule of the trainer (train/data.py, train/optim.py)."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from hieraquery_core.errors import HieraQueryError
from hieraquery_core.model import TrainingBatch
from tiny_models import make_model
from train.data import (BucketBatchSampler, FileDataset, ReplayMix, SampleDataset, SkipCounter, Skipped, StreamBatches, bucket_step, collate,
                        fit_to_bucket, load_records, make_buckets, model_buckets, nearest_bucket, stage_sample)
from train.optim import lr_curve, make_optimizer
from hieraquery_core.shapesworld import (TRAIN_PROMPTS, PlacementError, box_gap, edit_triplets, parse_image, parse_prompt, render_scales,
                                        scene_for_prompt, scene_satisfies, score_prompt, spec, train_pairs)
from train.shapesworld_data import ShapesWorldDataset, sample_rng, shapesworld_stream, weighted_categories


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return make_model("sana", "qwen2_5_vl", "pixel")


def write_image(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


# --- schedule and optimizer ------------------------------------------------------------------------

def test_lr_schedule_rises_from_min_to_peak_and_returns():
    lrs = lr_curve(100, 10, lr=5e-5, min_lr=1e-6)
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[9] == pytest.approx(5e-5)
    assert max(lrs) == pytest.approx(5e-5)
    assert lrs[-1] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_optimizer_trains_everything_but_the_frozen_mllm(model):
    opt = make_optimizer(model)
    params = [p for g in opt.param_groups for p in g["params"]]
    ids = {id(p) for p in params}
    assert ids == {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in ids for p in model.mllm.parameters())
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert id(model.connector.proj_out[0].weight) in decayed and id(model.connector.proj_out[0].bias) not in decayed
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_every_trainable_parameter_gets_a_gradient():
    """DDP (find_unused_parameters=False) needs it; the connector's unused token embedding is frozen."""
    m = make_model("sana", "qwen2_5_vl", "pixel").train()
    batch = TrainingBatch(["a red circle"], torch.rand(1, 3, 32, 32), [[torch.rand(3, 32, 32)]])
    m.training_loss(batch, torch.Generator().manual_seed(0)).total.backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not m.connector.encoder.embed_tokens.weight.requires_grad


# --- buckets -----------------------------------------------------------------------------------------

def test_buckets_fit_every_scale(model):
    assert bucket_step(2, [0.25, 0.5, 1.0]) == 8
    assert bucket_step(16, [0.5, 1.0]) == 32
    buckets = model_buckets(model)
    assert (32, 32) in buckets and len(buckets) > 1
    for h, w in buckets:
        assert h % 8 == 0 and w % 8 == 0 and h * w <= 32 * 32 and max(h / w, w / h) <= 2.5
        model.scale_sizes(h, w)  # raises if a scale is not a valid size
    assert model_buckets(model, square_only=True) == [(32, 32)]
    big = make_buckets(512, 32)
    assert (512, 512) in big and any(w > h for h, w in big) and any(h > w for h, w in big)
    with pytest.raises(HieraQueryError, match="multiple of 8"):
        make_buckets(36, 8)


def test_nearest_bucket_and_fit():
    buckets = [(32, 32), (24, 40), (40, 24)]
    assert nearest_bucket(100, 200, buckets) == (24, 40)
    assert nearest_bucket(300, 100, buckets) == (40, 24)
    assert nearest_bucket(50, 51, buckets) == (32, 32)
    x = torch.rand(3, 100, 200)
    assert fit_to_bucket(x, (24, 40)).shape == (3, 24, 40)
    assert fit_to_bucket(torch.rand(2, 3, 10, 10), (32, 32)).shape == (2, 3, 32, 32)


# --- manifests and folders ---------------------------------------------------------------------------

def test_manifest_filters_and_counts(tmp_path):
    (tmp_path / "img").mkdir()
    write_image(tmp_path / "img" / "a.png", 64, 64)
    write_image(tmp_path / "img" / "wide.png", 90, 30)  # ratio 3 > 2.5
    write_image(tmp_path / "img" / "b.jpg", 60, 40)
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    rows = [
        {"image": "img/a.png", "prompt": "a red circle", "clip_score": 0.5, "watermark_score": 0.1},
        {"image": "img/wide.png", "prompt": "wide"},
        {"image": "img/b.jpg", "caption": "alias column", "clip_score": 0.3},  # clip below 0.45
        {"image": "img/b.jpg", "prompt": "kept", "watermark_score": 0.4},
        {"image": "img/b.jpg", "prompt": "marked", "watermark_score": 0.9},
        {"image": "img/broken.png", "prompt": "broken"},
        {"image": "img/missing.png", "prompt": "missing", "width": 64, "height": 64},
    ]
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\nthis is not json\n")
    skips = SkipCounter()
    records = load_records(manifest, "t2i", skips)
    assert [r.prompt for r in records] == ["a red circle", "kept", "missing"]
    assert records[0].image == str(tmp_path / "img" / "a.png") and (records[1].width, records[1].height) == (60, 40)
    assert skips.counts == {"aspect ratio > 2.5": 1, "clip_score < 0.45": 1, "watermark_score > 0.5": 1, "unreadable image": 1, "manifest line is not JSON": 1}


def test_manifest_with_wrong_columns_names_the_expected_ones(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"file": "a.png", "label": "x"}) + "\n")
    with pytest.raises(HieraQueryError, match="needs 'image'.*'prompt'.*missing \\['image', 'prompt'\\]"):
        load_records(manifest, "t2i")
    manifest.write_text(json.dumps({"image": "a.png", "prompt": "x"}) + "\n")
    with pytest.raises(HieraQueryError, match="edit manifest needs .*'instruction'.*'source'.*missing \\['source'\\]"):
        load_records(manifest, "edit")


def test_folder_of_pairs_and_edits(tmp_path):
    write_image(tmp_path / "one.png", 32, 32)
    (tmp_path / "one.txt").write_text("a blue square\n")
    write_image(tmp_path / "one.source.png", 32, 32, seed=1)
    write_image(tmp_path / "two.png", 32, 32)  # no caption
    skips = SkipCounter()
    pairs = load_records(tmp_path, "t2i", skips)
    assert [(r.prompt, r.source) for r in pairs] == [("a blue square", None)]
    assert skips.counts == {"image without a .txt caption": 1}
    edits = load_records(tmp_path, "edit")
    assert edits[0].source == str(tmp_path / "one.source.png")
    with pytest.raises(HieraQueryError, match="does not exist"):
        load_records(tmp_path / "nowhere", "t2i")


def test_unreadable_sample_is_skipped_not_fatal(tmp_path):
    write_image(tmp_path / "good.png", 48, 32)
    (tmp_path / "good.txt").write_text("good")
    write_image(tmp_path / "bad.png", 32, 32)
    (tmp_path / "bad.txt").write_text("bad")
    records = load_records(tmp_path, "t2i")
    (tmp_path / "bad.png").write_bytes((tmp_path / "bad.png").read_bytes()[:60])  # truncated after indexing
    ds = FileDataset(records, "t2i", [(32, 32), (24, 40), (40, 24)])
    items = [ds[i] for i in range(len(ds))]
    assert isinstance(items[0], Skipped) and "unreadable" in items[0].reason
    assert items[1]["target"].shape == (3, 24, 40)
    batch = collate(items)
    assert batch["prompts"] == ["good"] and batch["skipped"] == {items[0].reason: 1}
    assert collate([items[0]])["targets"] is None


# --- stages, generic datasets, ShapesWorld --------------------------------------------------------------

def test_stage_samples():
    target, source = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    sample = {"prompt": "make the red circle blue", "target": target, "images": [source]}
    assert stage_sample(sample, "t2i")["images"] == []
    rec = stage_sample(sample, "reconstruction")
    assert rec["prompt"] == "" and rec["images"][0] is target and rec["target"] is target
    assert stage_sample(sample, "reconstruction", "reconstruct")["prompt"] == "reconstruct"
    assert stage_sample(sample, "edit")["images"][0] is source
    with pytest.raises(ValueError, match="source image"):
        stage_sample({**sample, "images": []}, "edit")


def test_shapesworld_samples_are_a_function_of_the_index():
    ds = ShapesWorldDataset("edit", 10, seed=3)
    a, b, c = ds[4], ds[4], ds[5]
    assert a["prompt"] == b["prompt"] and torch.equal(a["target"], b["target"]) and torch.equal(a["images"][0], b["images"][0])
    assert a["target"].shape == (3, 64, 64) and a["target"].max() <= 1.0
    assert not torch.equal(a["target"], c["target"])
    t2i = ShapesWorldDataset("t2i", 10, seed=3)
    assert t2i[0]["images"] == [] and t2i[0]["prompt"]
    stream = shapesworld_stream("t2i", seed=3, start=2)
    assert next(stream)["prompt"] == t2i[2]["prompt"]
    wrapped = SampleDataset(ds, "edit", [(32, 32)])
    item = wrapped[0]
    assert item["target"].shape == (3, 32, 32) and item["images"][0].shape == (3, 32, 32)
    hard, again = (ShapesWorldDataset("edit", 40, seed=3, edit_distractors=1.0) for _ in range(2))  # --edit-distractors reaches the triplets
    for i in range(40):
        expected = next(edit_triplets(sample_rng(3, "edit", i), distractor_share=1.0)).instruction
        assert hard[i]["prompt"] == expected and again[i]["prompt"] == expected
    spec_stream = ShapesWorldDataset("edit", 40, seed=3)
    assert [hard[i]["prompt"] for i in range(40)] != [spec_stream[i]["prompt"] for i in range(40)]
    ordered, anywhere = ShapesWorldDataset("t2i", 40, seed=3, caption_order=True), ShapesWorldDataset("t2i", 40, seed=3)  # --caption-order reaches the scenes
    assert [ordered[i]["prompt"] for i in range(40)] == [anywhere[i]["prompt"] for i in range(40)]
    assert any(not torch.equal(ordered[i]["target"], anywhere[i]["target"]) for i in range(40))


def test_category_weights_repeat_categories_and_shift_the_drawn_prompts():
    """``--category-weights position=3,counting=0``: position listed three times, counting left out, the rest once;
    "" is the spec's tuple, so a run without the option draws exactly the samples it drew before."""
    assert weighted_categories("") == spec.CATEGORIES
    weighted = weighted_categories(" position=3, counting=0 ")
    assert weighted.count("position") == 3 and "counting" not in weighted and len(weighted) == len(spec.CATEGORIES) + 1
    plain, heavy = ShapesWorldDataset("t2i", 600, seed=5), ShapesWorldDataset("t2i", 600, seed=5, categories=weighted)
    drawn = {name: Counter(ds[i]["category"] for i in range(600)) for name, ds in (("plain", plain), ("heavy", heavy))}
    assert drawn["heavy"]["counting"] == 0 < drawn["plain"]["counting"]
    assert drawn["heavy"]["position"] > 1.8 * drawn["plain"]["position"]  # 3/8 of the draws against 1/6
    for bad in ("position", "position=x", "pose=2", "position=1.5"):
        with pytest.raises(HieraQueryError, match="is not CATEGORY=WHOLE_NUMBER"):
            weighted_categories(bad)


def test_position_colours_colour_that_share_of_the_position_prompts_only():
    """``--position-colours 0.5``: about half the position prompts name a colour for each object, their uncoloured form is
    a training string, and the rendered target is painted as the coloured prompt says; 0 and the other categories
    keep the spec's stream."""
    def prompts(categories: tuple[str, ...], n: int, **option) -> list[str]:
        ds = ShapesWorldDataset("t2i", n, seed=5, categories=categories, **option)
        return [ds[i]["prompt"] for i in range(n)]

    coloured = ShapesWorldDataset("t2i", 400, seed=5, categories=("position",), position_colours=0.5)
    samples = [coloured[i] for i in range(400)]
    named = [[o.color for o in parse_prompt(s["prompt"]).objects] for s in samples]
    assert 0.4 < np.mean([None not in colours for colours in named]) < 0.6 and all(set(c) == {None} or None not in c for c in named)
    assert {re.sub(f" (?:{'|'.join(spec.COLORS)}) ", " ", s["prompt"]) for s in samples} <= set(TRAIN_PROMPTS["position"])
    assert all(score_prompt(s["prompt"], (s["target"].permute(1, 2, 0) * 255).round().byte().numpy()) for s in samples[:40])
    assert prompts(("position",), 400) == prompts(("position",), 400, position_colours=0.0)
    assert prompts(("two_object", "counting"), 60) == prompts(("two_object", "counting"), 60, position_colours=0.5)


def test_min_gap_spaces_the_text_to_image_scenes_and_keeps_squares_apart_at_16_px():
    """``--min-gap 4``: every text-to-image box keeps 4 px of background to every other (the spec's 2 otherwise), the
    scene still satisfies its prompt, and the 16 px target of four squares shows four objects, where at the spec's 2 px
    a share of them merge (docs/demo-and-ablations.md section 3, "Where the bundled model still fails")."""
    def gaps(ds: ShapesWorldDataset, n: int) -> list[int]:
        out = []
        for i in range(n):
            _, prompt, scene = next(train_pairs(sample_rng(ds.seed, "t2i", i), ds.categories, min_gap=ds.min_gap))
            assert ds[i]["prompt"] == prompt and scene_satisfies(scene, prompt)
            out += [box_gap(a.box, b.box) for a, b in itertools.combinations(scene.objects, 2)]
        return out

    assert min(gaps(ShapesWorldDataset("t2i", 200, seed=5, categories=("counting",), min_gap=4), 200)) >= 4
    assert min(gaps(ShapesWorldDataset("t2i", 200, seed=5, categories=("counting",)), 200)) < 4  # the spec's stream comes closer

    def four_squares_apart(min_gap: int) -> int:
        rng = np.random.default_rng(0)
        return sum(len(parse_image(render_scales(scene_for_prompt("four squares", rng, min_gap=min_gap))[16])) == 4 for _ in range(60))

    assert four_squares_apart(4) >= 59 > four_squares_apart(2) + 5
    with pytest.raises(PlacementError, match="give at least 2"):
        scene_for_prompt("four squares", np.random.default_rng(0), min_gap=1)


def test_generic_dataset_and_stream_samples_are_checked():
    good = {"prompt": "x", "target": torch.rand(3, 40, 40)}
    for other_layout in (torch.rand(40, 40, 3), (np.random.rand(40, 40, 3) * 255).astype(np.uint8), Image.new("RGB", (40, 40))):
        assert SampleDataset([{"prompt": "x", "target": other_layout}], "t2i", [(32, 32)])[0]["target"].shape == (3, 32, 32)
    items = [good, {"prompt": 3, "target": torch.rand(3, 8, 8)}, {"target": torch.rand(3, 8, 8)}, "nonsense"]
    ds = SampleDataset(items, "t2i", [(32, 32)])
    out = [ds[i] for i in range(4)]
    assert out[0]["target"].shape == (3, 32, 32)
    assert all(isinstance(o, Skipped) for o in out[1:])
    stream = StreamBatches(iter([good] * 5), "t2i", [(32, 32)], batch_size=2)
    batches = list(stream.epoch())
    assert len(batches) == 2 and batches[0]["targets"].shape == (2, 3, 32, 32)


# --- sampler ---------------------------------------------------------------------------------------------

def test_bucket_sampler_batches_one_bucket_and_splits_processes():
    buckets = ["a"] * 7 + ["b"] * 5
    ranks = [BucketBatchSampler(buckets, batch_size=2, num_replicas=2, rank=r, seed=1) for r in range(2)]
    e0 = [s.batches(0) for s in ranks]
    assert len(e0[0]) == len(e0[1]) == len(ranks[0]) == 2 + 2
    seen = set()
    for mine, theirs in zip(*e0):
        assert len({buckets[i] for i in mine + theirs}) == 1
        assert not set(mine) & set(theirs) or len(set(mine + theirs)) < 4  # overlap only where a bucket was padded
        seen.update(mine + theirs)
    assert seen == set(range(12))
    assert ranks[0].batches(0) == BucketBatchSampler(buckets, 2, 2, 0, seed=1).batches(0)
    assert ranks[0].batches(0) != ranks[0].batches(1)
    assert ranks[0].batches(0, start=3) == ranks[0].batches(0)[3:]
    assert math.isclose(len(BucketBatchSampler(["a"] * 5, 2)), 3)


def test_replay_mix_puts_a_share_of_text_to_image_samples_into_a_later_stage():
    edits = SampleDataset(ShapesWorldDataset("edit", 400, seed=1), "edit", [(32, 32)])
    pairs = SampleDataset(ShapesWorldDataset("t2i", 50, seed=1), "t2i", [(32, 32)])
    mix = ReplayMix(edits, pairs, 0.25, seed=0)
    replayed = [i for i in range(len(mix)) if mix.source(i)[0] is pairs]
    assert len(mix) == 400 and 0.18 < len(replayed) / 400 < 0.32
    assert np.array_equal(ReplayMix(edits, pairs, 0.25, seed=0).use_replay, mix.use_replay)  # a function of the seed: every process, every resume
    assert not np.array_equal(ReplayMix(edits, pairs, 0.25, seed=1).use_replay, mix.use_replay)
    t2i, edit = replayed[0], next(k for k in range(len(mix)) if k not in replayed)
    assert mix[t2i]["images"] == [] and mix[t2i]["prompt"] == pairs[mix.source(t2i)[1]]["prompt"]
    assert len(mix[edit]["images"]) == 1 and mix[edit]["prompt"] == edits[edit]["prompt"] and mix.bucket_of(t2i) == (32, 32)
    batch = collate([mix[t2i], mix[edit], Skipped("broken")])  # one batch, with and without input images
    assert batch["prompts"] == [mix[t2i]["prompt"], mix[edit]["prompt"]] and batch["skipped"] == {"broken": 1}
    assert batch["images"][0] == [] and batch["images"][1][0].shape == (3, 32, 32)
    with pytest.raises(HieraQueryError, match="replay share 1.0"):
        ReplayMix(edits, pairs, 1.0)
