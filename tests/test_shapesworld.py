"""Tests of ShapesWorld v1 (spec: /work/shared/notes/shapesworld-v1.md; decisions: docs/shapesworld.md)."""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter, deque
from pathlib import Path

import numpy as np
import pytest

try:
    import hieraquery_core.shapesworld as sw
except ImportError:  # pragma: no cover - running without the package on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import hieraquery_core.shapesworld as sw

from hieraquery_core.shapesworld import spec
from hieraquery_core.shapesworld.prompts import PROMPT_SPLIT_CATEGORIES, SCENE_SPLIT_CATEGORIES

SPEC_PALETTE = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 200, 30), "purple": (150, 60, 190), "orange": (245, 130, 30),
}


def obj(color: str, shape: str, x0: int, y0: int, side: int = 16) -> sw.SceneObject:
    return sw.SceneObject(color, shape, (x0, y0, x0 + side, y0 + side))


# --- spec, rendering --------------------------------------------------------------------------

def test_spec_constants():
    assert spec.PALETTE == SPEC_PALETTE
    assert spec.CANVAS == 64 and spec.BACKGROUND == (255, 255, 255)
    assert (spec.MIN_SIDE, spec.MAX_SIDE, spec.MIN_GAP, spec.MIN_MARGIN) == (14, 22, 2, 1)
    assert spec.RELATION_THRESHOLD == 12 and spec.OUTLINE_STROKE == 3
    assert spec.COUNT_WORDS == {1: "a", 2: "two", 3: "three", 4: "four"}


@pytest.mark.parametrize("style", ["filled", "outline"])
def test_palette_exact_and_boxes(style):
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = sw.random_scene(rng, style=style)
        img = sw.render(scene)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        colours = {tuple(int(v) for v in p) for p in img.reshape(-1, 3)}
        # no anti-aliasing: only white and the exact palette colours of the scene's objects
        assert colours == {(255, 255, 255)} | {SPEC_PALETTE[o.color] for o in scene.objects}
        inside = np.zeros((64, 64), bool)
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            inside[y0:y1, x0:x1] = True
            patch = img[y0:y1, x0:x1]
            ink = np.any(patch != 255, axis=-1)
            # the painted pixels span the whole box (first/last rows and columns all touched)
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
            assert np.all(patch[ink] == SPEC_PALETTE[o.color])
        assert np.all(img[~inside] == 255)


def test_outline_is_hollow_with_3px_stroke():
    scene = sw.Scene([obj("blue", "square", 10, 10, 20)], "outline")
    img = sw.render(scene)
    ink = np.any(img != 255, axis=-1)
    assert ink[10:30, 10:13].all() and ink[10:13, 10:30].all() and ink[27:30, 10:30].all()
    assert not ink[13:27, 13:27].any()  # white inside the 3 px stroke
    filled = np.any(sw.render(scene.with_style("filled")) != 255, axis=-1)
    assert filled[10:30, 10:30].all()


def test_downscale_equals_area_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for size in (32, 16, 8):
        k = 64 // size
        out = sw.downscale(img, size)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        for y in range(size):
            for x in range(size):
                mean = img[y * k:(y + 1) * k, x * k:(x + 1) * k].reshape(-1, 3).astype(float).mean(0)
                assert np.all(np.abs(out[y, x] - mean) <= 0.5)
                assert np.array_equal(out[y, x], np.floor(mean + 0.5).astype(np.uint8))
    with pytest.raises(ValueError):
        sw.downscale(img, 24)
    scales = sw.render_scales(sw.random_scene(rng))
    assert sorted(scales) == [16, 32, 64]
    assert np.array_equal(scales[16], sw.downscale(scales[64], 16))


# --- placement ------------------------------------------------------------------------------

def test_random_scenes_follow_placement_rules():
    rng = np.random.default_rng(2)
    counts = Counter()
    for _ in range(200):
        scene = sw.random_scene(rng)
        assert scene.is_valid(), scene.problems()
        counts[len(scene)] += 1
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            assert 14 <= x1 - x0 <= 22 and 14 <= y1 - y0 <= 22
            assert x0 >= 1 and y0 >= 1 and x1 <= 63 and y1 <= 63
        for a in scene.objects:
            for b in scene.objects:
                if a is b:
                    continue
                # >= 2 background columns or rows between the two boxes
                gap_x = max(b.box[0] - a.box[2], a.box[0] - b.box[2])
                gap_y = max(b.box[1] - a.box[3], a.box[1] - b.box[3])
                assert max(gap_x, gap_y) >= 2
    assert set(counts) == {1, 2, 3, 4}


def test_invalid_scenes_and_impossible_placement():
    assert not sw.Scene([obj("red", "circle", 10, 10), obj("red", "square", 27, 10)]).is_valid()  # 1 px gap
    assert sw.Scene([obj("red", "circle", 10, 10), obj("red", "square", 28, 10)]).is_valid()
    assert not sw.Scene([obj("red", "circle", 0, 10)]).is_valid()  # no margin
    assert not sw.Scene([obj("red", "circle", 10, 10, 23)]).is_valid()  # too big
    assert not sw.Scene([]).is_valid()
    rng = np.random.default_rng(3)
    with pytest.raises(sw.PlacementError, match="1-4 objects"):
        sw.place_objects(rng, [("red", "circle")] * 5)
    with pytest.raises(sw.PlacementError, match="relation"):
        sw.place_objects(rng, [("red", "circle"), ("blue", "square")], relation=(0, "left", 0), restarts=5)
    full = sw.Scene([obj("red", "square", 1, 1, 22), obj("red", "square", 40, 1, 22),
                     obj("red", "square", 1, 40, 22), obj("red", "square", 40, 40, 22)])
    assert full.is_valid()
    with pytest.raises(sw.PlacementError, match="no room"):
        sw.place_object(rng, "blue", "circle", full.objects, tries=50)


# --- prompts and scoring ---------------------------------------------------------------------

@pytest.mark.parametrize("category", spec.CATEGORIES)
def test_sampled_scenes_satisfy_their_prompt(category):
    rng = np.random.default_rng(4)
    for _ in range(25):
        prompt, scene = sw.sample_pair(category, rng)
        assert prompt in sw.ALL_PROMPTS[category]
        assert scene.is_valid() and sw.scene_satisfies(scene, prompt)
        assert sw.score_prompt(prompt, sw.render(scene)), (prompt, scene)


def test_parse_prompt_grammar():
    r = sw.parse_prompt("three triangles, outline style")
    assert r.style == "outline" and len(r.objects) == 3 and {o.shape for o in r.objects} == {"triangle"}
    r = sw.parse_prompt("a circle to the right of a square")
    assert r.relation == "right" and [o.shape for o in r.objects] == ["circle", "square"]
    r = sw.parse_prompt("a red circle and a blue square")
    assert r.style == "filled" and [(o.color, o.shape) for o in r.objects] == [("red", "circle"), ("blue", "square")]
    for bad in ("a pink circle", "five squares", "a circle near a square", "a red circle."):
        with pytest.raises(ValueError):
            sw.parse_prompt(bad)


def test_geneval_ground_truth_heldout():
    pairs = sw.heldout_pairs(300, seed=0)
    scores = sw.geneval([(c, p, sw.render(s)) for c, p, s in pairs])
    print(f"\nShapesWorld GenEval on ground-truth renders of {len(pairs)} held-out prompts: {scores}")
    assert set(scores) == set(spec.CATEGORIES) | {"overall"}
    assert scores["overall"] >= 0.98
    # a model output at the 32x32 scale is parsed too (upsampled)
    sub = pairs[::5]
    scores32 = sw.geneval([(c, p, sw.downscale(sw.render(s), 32)) for c, p, s in sub])
    print(f"same, 32x32 renders ({len(sub)} prompts): overall {scores32['overall']:.3f}")
    assert scores32["overall"] >= 0.9


def _mirror(scene: sw.Scene) -> sw.Scene:
    return sw.Scene([sw.SceneObject(o.color, o.shape, (64 - o.box[2], o.box[1], 64 - o.box[0], o.box[3]))
                     for o in scene.objects], scene.style)


def _flip(scene: sw.Scene) -> sw.Scene:
    return sw.Scene([sw.SceneObject(o.color, o.shape, (o.box[0], 64 - o.box[3], o.box[2], 64 - o.box[1]))
                     for o in scene.objects], scene.style)


def test_wrong_images_fail_their_prompt():
    rng = np.random.default_rng(5)
    wrong = []
    for category in spec.CATEGORIES:
        for _ in range(10):
            prompt, scene = sw.sample_pair(category, rng)
            req = sw.parse_prompt(prompt)
            other_style = scene.with_style("filled" if scene.style == "outline" else "outline")
            wrong.append((category, prompt, sw.render(other_style)))
            o0 = scene.objects[0]
            if len(scene) > 1:  # a missing object
                wrong.append((category, prompt, sw.render(sw.Scene(scene.objects[1:], scene.style))))
            if len(scene) < 4:  # an extra object
                try:
                    extra = sw.place_object(rng, "red", "square", scene.objects)
                    wrong.append((category, prompt, sw.render(sw.Scene(scene.objects + (extra,), scene.style))))
                except sw.PlacementError:
                    pass
            if req.objects[0].color is not None:  # a changed colour
                new = "green" if o0.color != "green" else "blue"
                changed = sw.Scene((o0.with_color(new),) + scene.objects[1:], scene.style)
                wrong.append((category, prompt, sw.render(changed)))
            if category == "counting" or (req.form == "list" and len(req.objects) == 1):  # a changed shape
                shape = "circle" if o0.shape != "circle" else "square"
                changed = sw.Scene((sw.SceneObject(o0.color, shape, o0.box),) + scene.objects[1:], scene.style)
                wrong.append((category, prompt, sw.render(changed)))
            if req.relation:  # swapped relation
                swapped = _mirror(scene) if req.relation in ("left", "right") else _flip(scene)
                wrong.append((category, prompt, sw.render(swapped)))
    assert len(wrong) >= 120
    assert not any(sw.score_prompt(p, img) for _, p, img in wrong)
    scores = sw.geneval(wrong)
    assert scores["overall"] == 0.0
    # colour/shape binding: a red circle and a blue square is not a blue circle and a red square
    s = sw.Scene([obj("blue", "circle", 5, 5), obj("red", "square", 40, 40)])
    assert not sw.score_prompt("a red circle and a blue square", sw.render(s))
    assert sw.score_prompt("a blue circle and a red square", sw.render(s))
    assert sw.score_prompt("a circle above a square", sw.render(s))
    assert not sw.score_prompt("a circle below a square", sw.render(s))
    # the 12 px threshold: centres 12 apart pass, 11 apart fail
    near = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 5, 23)])  # centre dy = 18
    assert sw.score_prompt("a circle above a square", sw.render(near))
    assert not sw.score_prompt("a circle to the left of a square", sw.render(near))
    s12 = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 17, 30)])  # dx = 12 exactly
    s11 = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 16, 30)])
    assert sw.score_prompt("a circle to the left of a square", sw.render(s12))
    assert not sw.score_prompt("a circle to the left of a square", sw.render(s11))


def test_attribute_accuracy_names_the_failing_attribute():
    s = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 40, 40)])
    image = sw.render(s)
    assert sw.attribute_accuracy([("a red circle and a blue square", image)]) == {
        "count": 1.0, "shape": 1.0, "color": 1.0, "style": 1.0, "n_counted": 1}
    wrong_shape = sw.attribute_accuracy([("a red circle and a blue triangle", image)])
    assert (wrong_shape["shape"], wrong_shape["color"], wrong_shape["style"]) == (0.0, 1.0, 1.0)
    wrong_color = sw.attribute_accuracy([("a green circle and a blue square", image), ("two circles", image)])
    assert (wrong_color["shape"], wrong_color["color"]) == (0.5, 0.0)  # "two circles" names no colour
    wrong_style = sw.attribute_accuracy([("a circle and a square, outline style", image)])
    assert (wrong_style["style"], wrong_style["color"]) == (0.0, 0.0)
    miscounted = sw.attribute_accuracy([("a red circle", image), ("four squares", image), ("a circle and a square", image)])
    assert miscounted["count"] == pytest.approx(1 / 3) and miscounted["n_counted"] == 1 and miscounted["shape"] == 1.0
    assert sw.attribute_accuracy([("a red circle", image)])["shape"] == 0.0
    with pytest.raises(ValueError, match="no results"):
        sw.attribute_accuracy([])


def test_caption_order_puts_listed_objects_left_to_right_in_prompt_order():
    """``caption_order=True``: every training scene still satisfies its prompt, and the objects of a listing prompt
    stand left to right as named (a colour-attribution prompt is its scene's caption); from the same random draws the
    boxes are the ones placed without it, and relation and count prompts keep their layout."""
    for cat, prompt, scene in itertools.islice(sw.train_pairs(np.random.default_rng(7), caption_order=True), 300):
        assert sw.scene_satisfies(scene, prompt)
        want = sw.parse_prompt(prompt)
        if want.form == "list":
            assert [o.shape for o in scene.left_to_right()] == [w.shape for w in want.objects]
            assert all(w.color in (None, o.color) for w, o in zip(want.objects, scene.left_to_right()))
        if cat == "color_attr":
            assert sw.caption(scene) == prompt
    moved = 0
    for i, (cat, prompt, _) in enumerate(itertools.islice(sw.train_pairs(np.random.default_rng(8)), 200)):
        ordered, anywhere = (sw.scene_for_prompt(prompt, np.random.default_rng(i), order) for order in (True, False))
        assert sorted(o.box for o in ordered.objects) == sorted(o.box for o in anywhere.objects)
        assert sw.parse_prompt(prompt).form == "list" or ordered == anywhere
        moved += ordered != anywhere
    assert moved > 20  # without the option, many two-object scenes are laid out otherwise


def test_with_colours_names_a_colour_for_each_object_of_a_position_prompt():
    """``with_colours``: the same shapes, relation and style with a colour per object (each colour drawn); a prompt
    that already names colours keeps them, and a prompt that is not a position prompt is refused."""
    rng = np.random.default_rng(3)
    for prompt in sw.TRAIN_PROMPTS["position"]:
        coloured = sw.with_colours(prompt, rng)
        plain, want = sw.parse_prompt(prompt), sw.parse_prompt(coloured)
        assert [o.shape for o in want.objects] == [o.shape for o in plain.objects] and (want.relation, want.style) == (plain.relation, plain.style)
        assert all(o.color in sw.COLORS for o in want.objects) and sw.with_colours(coloured, rng) == coloured
    assert len({sw.with_colours("a circle above a square", rng) for _ in range(60)}) > 20  # 36 colour pairs
    with pytest.raises(ValueError, match="is not one"):
        sw.with_colours("a red circle and a blue square", rng)


def test_shape_binding_says_which_named_shape_was_painted_twice():
    def two(shape_a: str, shape_b: str) -> np.ndarray:
        return sw.render(sw.Scene([obj("red", shape_a, 5, 5), obj("blue", shape_b, 40, 40)]))

    prompt = "a red circle to the left of a blue square"
    results = [(prompt, two("circle", "square")), (prompt, two("square", "circle")),  # right, whichever goes where
               ("a circle and a square", two("circle", "circle")), ("a triangle and a circle", two("circle", "circle")),
               ("a circle and a square", two("triangle", "square")),
               ("a circle and a square", sw.render(sw.Scene([obj("red", "circle", 5, 5)]))),  # one object: not counted
               ("a circle above a circle", two("circle", "circle")), ("a red circle", two("circle", "square"))]  # not two shapes
    assert sw.shape_binding(results) == {"right": 0.4, "first shape twice": 0.2, "second shape twice": 0.2, "other": 0.2, "n": 5,
                                         "first named on the left": 0.5}
    assert sw.shape_binding([("a red circle", two("circle", "square"))]) == {**dict.fromkeys(sw.evaluate.SHAPE_BINDINGS, 0.0), "n": 0,
                                                                            "first named on the left": 0.0}
    assert sw.shape_binding([("a circle and a square", two("circle", "square"))])["first named on the left"] == 1.0


def test_relation_placement_says_where_the_first_named_object_went():
    def at(first: tuple[int, int], second: tuple[int, int], shapes: tuple[str, str] = ("circle", "square")) -> np.ndarray:
        return sw.render(sw.Scene([obj("red", shapes[0], *first), obj("blue", shapes[1], *second)]))

    prompt = "a circle above a square"
    results = [(prompt, at((20, 2), (20, 40))),  # above: as named
               (prompt, at((20, 40), (20, 2))),  # below: opposite
               (prompt, at((2, 20), (40, 26))),  # beside it, 6 px lower: the other axis
               (prompt, at((2, 20), (40, 16))),  # beside it, 4 px higher: too close vertically, but left of it
               ("a circle to the right of a square", at((40, 20), (2, 20))),  # as named
               ("a circle to the right of a square", at((20, 2), (20, 40), ("circle", "circle"))),  # wrong shapes: not counted
               ("a circle and a square", at((20, 2), (20, 40)))]  # no relation: not counted
    report = sw.relation_placement(results)
    assert {k: report[k] for k in (*sw.evaluate.PLACEMENTS, "n")} == {"as named": 0.4, "opposite": 0.2, "other axis": 0.4, "too close": 0.0, "n": 5}
    assert report["by relation"] == {"above": {"as named": 0.25, "n": 4}, "right": {"as named": 1.0, "n": 1}}
    close = sw.render(sw.Scene([obj("red", "circle", 20, 20, 10), obj("blue", "square", 31, 31, 10)]))  # centres 11 px apart both ways
    assert sw.relation_placement([(prompt, close)])["too close"] == 1.0


def test_parse_image_finds_objects_and_ignores_noise():
    scene = sw.Scene([obj("red", "circle", 2, 2, 14), obj("yellow", "triangle", 30, 5, 22),
                      obj("purple", "square", 5, 40, 15), obj("orange", "triangle", 40, 40, 14)], "outline")
    img = sw.render(scene)
    img[60:62, 30:32] = (0, 0, 0)  # a 4 px speck of noise
    got = sorted((d.color, d.shape, d.style, d.box) for d in sw.parse_image(img))
    assert got == sorted((o.color, o.shape, "outline", o.box) for o in scene.objects)
    assert sw.parse_image(np.full((64, 64, 3), 255, np.uint8)) == []
    with pytest.raises(ValueError):
        sw.parse_image(np.zeros((64, 64), np.uint8))


def test_label_components_matches_bfs():
    rng = np.random.default_rng(7)

    def bfs(mask, conn):
        h, w = mask.shape
        lab = np.zeros((h, w), int)
        nbrs = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if conn == 8 else [])
        n = 0
        for y in range(h):
            for x in range(w):
                if mask[y, x] and not lab[y, x]:
                    n += 1
                    lab[y, x] = n
                    q = deque([(y, x)])
                    while q:
                        cy, cx = q.popleft()
                        for dy, dx in nbrs:
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not lab[ny, nx]:
                                lab[ny, nx] = n
                                q.append((ny, nx))
        return lab, n

    for _ in range(10):
        mask = rng.random((20, 23)) < 0.45
        for conn in (4, 8):
            got, n = sw.label_components(mask, conn)
            ref, m = bfs(mask, conn)
            assert n == m
            # same partition: a one-to-one map between labels
            pairs = set(zip(got[mask].tolist(), ref[mask].tolist()))
            assert len(pairs) == n and np.array_equal(got == 0, ~mask)


# --- held-out split -------------------------------------------------------------------------

def test_heldout_split():
    hp = sw.heldout_prompts(300, seed=0)
    assert hp == sw.heldout_prompts(300, seed=0) and len(hp) == 300
    assert Counter(c for c, _ in hp) == {c: 50 for c in spec.CATEGORIES}
    for c, p in hp:
        assert p in sw.ALL_PROMPTS[c]
        assert sw.is_held_out(p) == (c in PROMPT_SPLIT_CATEGORIES)
    for c in PROMPT_SPLIT_CATEGORIES:
        assert 0 < len(sw.HELDOUT_PROMPTS[c]) < len(sw.ALL_PROMPTS[c])
    held = {p for c, p in hp if c in PROMPT_SPLIT_CATEGORIES}
    rng = np.random.default_rng(8)
    gen = sw.train_pairs(rng)
    seen = Counter()
    for _ in range(3000):
        c, p, scene = next(gen)
        seen[c] += 1
        assert not sw.is_held_out(p) and p not in held
        assert sw.scene_satisfies(scene, p)
        if c in SCENE_SPLIT_CATEGORIES:
            assert not sw.is_held_out_scene(scene)
    assert set(seen) == set(spec.CATEGORIES)
    for c, p, scene in sw.heldout_pairs(120, seed=1):
        assert sw.scene_satisfies(scene, p)
        if c in SCENE_SPLIT_CATEGORIES:
            assert sw.is_held_out_scene(scene)
    # stable hash, not Python's randomised hash()
    assert sw.is_held_out("a red circle and a blue square") == sw.is_held_out("a red circle and a blue square")
    assert all(not sw.is_held_out(p) for p in sw.ALL_PROMPTS["counting"])


# --- edits ----------------------------------------------------------------------------------

def test_edit_triplets_scored():
    rng = np.random.default_rng(9)
    kinds = Counter()
    for _ in range(60):
        e = sw.sample_edit(rng)
        kinds[e.kind] += 1
        assert e.source.is_valid() and e.target.is_valid()
        src, tgt = sw.render(e.source), sw.render(e.target)
        assert sw.edit_correct(src, e.instruction, tgt), e
        assert not sw.edit_correct(src, e.instruction, src), e  # nothing changed
        assert sw.edit_outcome(src, e.instruction, src) == "change not made" and sw.edit_outcome(src, e.instruction, tgt) == "correct", e
        ins = sw.parse_instruction(e.instruction)
        if ins.kind == "recolor":
            wrong = [c for c in spec.COLORS if c not in (ins.color, ins.new_color)][0]
            bad = sw.apply_instruction(e.source, f"make the {ins.color} {ins.shape} {wrong}")
            assert not sw.edit_correct(src, e.instruction, sw.render(bad))
        if ins.kind in ("recolor", "remove") and len(e.target) > 1:  # another object moved
            moved = list(e.target.objects)
            for i, o in enumerate(moved):
                if o.box[0] > 5:
                    moved[i] = sw.SceneObject(o.color, o.shape, (o.box[0] - 5, o.box[1], o.box[2] - 5, o.box[3]))
                    break
            if sw.Scene(moved, e.target.style).is_valid() and moved != list(e.target.objects):
                assert not sw.edit_correct(src, e.instruction, sw.render(sw.Scene(moved, e.target.style)))
    assert set(kinds) == set(spec.EDIT_KINDS)
    acc = sw.edit_accuracy([(sw.render(e.source), e.instruction, sw.render(e.target))
                            for e in (sw.sample_edit(rng, k) for k in spec.EDIT_KINDS * 5)])
    print(f"\nedit accuracy of ground-truth targets: {acc}")
    assert acc["overall"] == 1.0


def test_reconstruction_scored_in_place_and_anywhere():
    s = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 40, 30)])
    src = sw.render(s)
    assert sw.reconstruction_correct(src, src)
    moved = sw.render(sw.Scene([obj("red", "circle", 12, 5), obj("blue", "square", 40, 30)]))
    assert not sw.reconstruction_correct(src, moved)  # the circle moved 7 px
    assert sw.reconstruction_correct(src, moved, tolerance=None)
    recoloured = sw.render(sw.apply_instruction(s, "make the red circle green"))
    restyled = sw.render(sw.apply_instruction(s, "make it outline style"))
    removed = sw.render(sw.apply_instruction(s, "remove the red circle"))
    for wrong in (recoloured, restyled, removed):
        assert not sw.reconstruction_correct(src, wrong, tolerance=None)
    acc = sw.reconstruction_accuracy([(src, src), (src, moved), (src, removed), (src, src)])
    assert acc == {"in_place": 0.5, "objects": 0.75}
    with pytest.raises(ValueError, match="no pairs"):
        sw.reconstruction_accuracy([])


def test_edit_outcome_says_which_half_of_a_failed_edit_failed():
    """``edit_outcome``: the instructed change vs the rest of the picture (the demo's recolour failures pick the
    wrong object: "both wrong")."""
    s = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 40, 5), obj("green", "triangle", 5, 40)])
    src = sw.render(s)
    scene = lambda *objects, style="filled": sw.render(sw.Scene(list(objects), style))
    red, blue, green = s.objects
    cases = {
        "make the red circle yellow": {"correct": scene(red.with_color("yellow"), blue, green),
                                       "change not made": src,
                                       "rest changed": scene(red.with_color("yellow"), blue.with_color("yellow"), green),
                                       "both wrong": scene(red, blue.with_color("yellow"), green)},
        "remove the blue square": {"correct": scene(red, green), "change not made": src,
                                   "rest changed": scene(red, green, style="outline"), "both wrong": scene(red, blue)},
        "add a purple circle": {"correct": scene(red, blue, green, obj("purple", "circle", 40, 40)), "change not made": src,
                                "rest changed": scene(blue, green, obj("purple", "circle", 40, 40)),
                                "both wrong": scene(blue, green, obj("orange", "circle", 40, 40))},
        "make it outline style": {"correct": scene(red, blue, green, style="outline"), "change not made": src,
                                  "rest changed": scene(red, blue, style="outline"), "both wrong": scene(red, blue)},
    }
    for instruction, outputs in cases.items():
        for outcome, output in outputs.items():
            assert sw.edit_outcome(src, instruction, output) == outcome, (instruction, outcome)
            assert sw.edit_correct(src, instruction, output) == (outcome == "correct")
    shares = sw.edit_outcomes([(src, "make the red circle yellow", src), (src, "make the red circle yellow", cases["make the red circle yellow"]["correct"]),
                               (src, "remove the blue square", src)])
    assert shares["recolor"] == {"correct": 0.5, "change not made": 0.5, "rest changed": 0.0, "both wrong": 0.0}
    assert shares["remove"]["change not made"] == 1.0 and set(shares) == {"recolor", "remove"}
    with pytest.raises(ValueError, match="no results"):
        sw.edit_outcomes([])



def test_edit_collateral_counts_changed_objects_by_their_relation_to_the_named_one():
    """``edit_collateral``: of the unnamed objects, the share not kept, split into same colour / same shape / neither."""
    s = sw.Scene([obj("red", "circle", 5, 5), obj("red", "square", 40, 5), obj("blue", "circle", 5, 40), obj("green", "triangle", 40, 40)])
    src = sw.render(s)
    red, red_sq, blue, green = s.objects
    scene = lambda *objects, style="filled": sw.render(sw.Scene(list(objects), style))
    # recolour the red circle: the red square (same colour) also recoloured, the blue circle (same shape) kept
    by_colour = scene(red.with_color("yellow"), red_sq.with_color("yellow"), blue, green)
    everything = scene(red.with_color("yellow"), red_sq.with_color("yellow"), blue.with_color("yellow"), green.with_color("yellow"))
    got = sw.edit_collateral([(src, "make the red circle yellow", by_colour), (src, "make the red circle yellow", everything)])
    assert got == {"recolor": {"same colour": 1.0, "same shape": 0.5, "neither": 0.5}}
    # removal: the red square removed too, then a clean removal; restyled leftovers count as changed
    got = sw.edit_collateral([(src, "remove the red circle", scene(blue, green)),
                              (src, "remove the red circle", scene(red_sq, blue, green)),
                              (src, "remove the red circle", scene(red_sq, blue, green, style="outline")),
                              (src, "make it outline style", src)])  # restyle and add name no object: not counted
    assert got == {"remove": {"same colour": pytest.approx(2 / 3), "same shape": pytest.approx(1 / 3), "neither": pytest.approx(1 / 3)}}
    lone = sw.render(sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 40, 5)]))
    assert sw.edit_collateral([(lone, "remove the red circle", lone)]) == {"remove": {"same colour": None, "same shape": None, "neither": 0.0}}


def test_edit_distractors_give_the_named_object_a_same_colour_neighbour():
    """``edit_triplets(distractor_share=...)``: that share of recolours and removals needs the shape word; 0 is the spec's stream."""
    from itertools import islice

    from hieraquery_core.shapesworld.edits import shares_colour

    plain = [t.instruction for t in islice(sw.edit_triplets(np.random.default_rng(3)), 40)]
    assert [t.instruction for t in islice(sw.edit_triplets(np.random.default_rng(3), distractor_share=0.0), 40)] == plain

    def distracted(share: float) -> list[bool]:
        flags = []
        for t in islice(sw.edit_triplets(np.random.default_rng(4), distractor_share=share), 300):
            ins = sw.parse_instruction(t.instruction)
            if ins.kind in ("recolor", "remove"):
                named = [o for o in t.source.objects if (o.color, o.shape) == (ins.color, ins.shape)]
                assert len(named) == 1  # still a valid instruction
                flags.append(shares_colour(named[0], t.source))
        return flags

    assert all(distracted(1.0))
    natural, half = np.mean(distracted(0.0)), np.mean(distracted(0.5))
    assert natural < 0.4 and half > natural + 0.2
    with pytest.raises(ValueError, match="distractor_share"):
        next(sw.edit_triplets(np.random.default_rng(0), distractor_share=1.5))

def test_edit_instructions_apply_and_fail_clearly():
    s = sw.Scene([obj("red", "circle", 5, 5), obj("blue", "square", 40, 5), obj("blue", "square", 5, 40)])
    t = sw.apply_instruction(s, "make the red circle green")
    assert [o.color for o in t.objects] == ["green", "blue", "blue"] and t.objects[0].box == s.objects[0].box
    assert len(sw.apply_instruction(s, "remove the red circle")) == 2
    added = sw.apply_instruction(s, "add a yellow triangle")
    assert added.is_valid() and added.objects[:3] == s.objects and added.objects[3].name == "yellow triangle"
    assert added == sw.apply_instruction(s, "add a yellow triangle")  # deterministic by default
    assert sw.apply_instruction(s, "make it outline style").style == "outline"
    with pytest.raises(ValueError, match="names no object.*no green circle"):
        sw.apply_instruction(s, "make the green circle red")
    with pytest.raises(ValueError, match="names no object"):
        sw.apply_instruction(s, "remove the red triangle")
    with pytest.raises(ValueError, match="ambiguous.*2 objects"):
        sw.apply_instruction(s, "remove the blue square")
    with pytest.raises(ValueError, match="cannot parse"):
        sw.apply_instruction(s, "paint everything pink")
    with pytest.raises(ValueError, match="only object"):
        sw.apply_instruction(sw.Scene([obj("red", "circle", 5, 5)]), "remove the red circle")
    assert sw.parse_instruction("make the red circle green") == sw.Instruction("recolor", "red", "circle", "green")


# --- understanding --------------------------------------------------------------------------

def test_captions_round_trip():
    s = sw.Scene([obj("blue", "square", 40, 5), obj("red", "circle", 5, 30), obj("green", "triangle", 22, 44)],
                 "outline")
    assert sw.caption(s) == "a red circle and a green triangle and a blue square, outline style"
    rng = np.random.default_rng(10)
    for _ in range(100):
        scene = sw.random_scene(rng)
        text = sw.caption(scene)
        req = sw.parse_prompt(text)
        assert sw.scene_satisfies(scene, text)
        assert [(o.color, o.shape) for o in req.objects] == [(o.color, o.shape) for o in scene.left_to_right()]
        assert sw.score_prompt(text, sw.render(scene))
    for _ in range(50):
        scene, text = sw.sample_caption(rng)
        assert text == sw.caption(scene) and not sw.is_held_out(text)


def test_understanding_answers():
    s = sw.Scene([obj("red", "circle", 2, 5), obj("blue", "square", 40, 5), obj("green", "circle", 20, 40)])
    assert sw.answer_question(s, "how many circles are there") == "two"
    assert sw.answer_question(s, "how many squares are there") == "one"
    assert sw.answer_question(s, "how many triangles are there") == "zero"
    assert sw.answer_question(s, "what color is the square") == "blue"
    assert sw.answer_question(s, "is the red circle to the left of the blue square") == "yes"
    assert sw.answer_question(s, "is the blue square to the left of the green circle") == "no"
    assert sw.answer_question(s, "is the red circle to the left of the green circle") == "yes"  # dx = 18
    with pytest.raises(ValueError, match="2 circles"):
        sw.answer_question(s, "what color is the circle")
    with pytest.raises(ValueError):
        sw.answer_question(s, "is the red square to the left of the blue square")
    rng = np.random.default_rng(11)
    kinds = Counter()
    for _ in range(150):
        scene, q, a = sw.sample_question(rng)
        kinds[sw.parse_question(q).kind] += 1
        assert a == sw.answer_question(scene, q)
        assert a in set(spec.ANSWER_NUMBER_WORDS.values()) | set(spec.COLORS) | {"yes", "no"}
    assert set(kinds) == {"count", "color", "left_of"}


# --- scales ---------------------------------------------------------------------------------

def test_cross_scale_consistency():
    rng = np.random.default_rng(12)
    true_scores, mixed_scores = [], []
    for _ in range(20):
        a, b = sw.random_scene(rng), sw.random_scene(rng)
        sa, sb = sw.render_scales(a), sw.render_scales(b)
        true_scores.append(sw.cross_scale_consistency(sa))
        mixed_scores.append(sw.cross_scale_consistency({16: sb[16], 32: sb[32], 64: sa[64]}))
    assert min(true_scores) > 0.999
    assert max(mixed_scores) < 0.8 and np.mean(mixed_scores) < 0.5
    print(f"\ncross-scale consistency: true {np.mean(true_scores):.3f}, mismatched {np.mean(mixed_scores):.3f}")
    blank = np.full((16, 16, 3), 255, np.uint8)
    assert sw.cross_scale_consistency([blank, np.full((64, 64, 3), 255, np.uint8)]) == 1.0


def test_text_questions_are_settled_by_their_text():
    """Every text-only question has one answer whatever scene the text describes: another scene drawn for
    the same prompt gives the same answer; left-of questions are only asked of captions, whose order
    (left to right) settles them; held-out prompts never appear."""
    from hieraquery_core.shapesworld import is_held_out, parse_question, sample_text_question, scene_for_prompt
    from hieraquery_core.shapesworld.understanding import answer_question

    rng = np.random.default_rng(5)
    kinds = set()
    for _ in range(300):
        text, question, answer = sample_text_question(rng)
        q = parse_question(question)
        kinds.add(q.kind)
        assert not is_held_out(text)
        if q.kind == "left_of":
            first, second = text.index(f"{q.color} {q.shape}"), text.index(f"{q.color2} {q.shape2}")
            assert answer == ("yes" if first < second else "no")
        else:
            assert answer_question(scene_for_prompt(text, rng), question) == answer, (text, question)
    assert kinds == {"count", "color", "left_of"}


def test_relation_text_questions_are_settled_by_every_scene_of_their_prompt():
    """``sample_relation_text_question``: a training position prompt and a question about which way its relation
    points; the answer holds in any scene drawn for the prompt, "yes" and "no" come about equally often, and every
    relation word and both orders are asked; with ``position_colours`` some prompts name colours, every one a training
    string once they are taken out."""
    from hieraquery_core.shapesworld import sample_relation_text_question, scene_for_prompt

    rng = np.random.default_rng(6)
    asked, answers, coloured = set(), [], 0
    for _ in range(300):
        text, question, answer = sample_relation_text_question(rng, position_colours=0.5)
        plain = re.sub(f" (?:{'|'.join(sw.COLORS)}) ", " ", text)
        assert sw.parse_prompt(text).form == "relation" and plain in sw.TRAIN_PROMPTS["position"]
        coloured += plain != text
        first, phrase, second = re.fullmatch(rf"is the ({'|'.join(sw.SHAPES)}) (.+) the ({'|'.join(sw.SHAPES)})", question).groups()
        scene = scene_for_prompt(text, rng)
        a, b = (next(o for o in scene.objects if o.shape == shape) for shape in (first, second))
        assert sw.relation_holds(a, b, sw.spec.RELATIONS[phrase]) == (answer == "yes"), (text, question, answer)
        asked.add((phrase, first == sw.parse_prompt(text).objects[0].shape))
        answers.append(answer)
    assert len(asked) == 8 and 0.4 < answers.count("yes") / len(answers) < 0.6 and 100 < coloured < 200
    assert [sw.relation_text_question("a circle above a square", word, order) for word in (False, True) for order in (False, True)] == [
        ("is the circle above the square", "yes"), ("is the square above the circle", "no"),
        ("is the circle below the square", "no"), ("is the square below the circle", "yes")]


def test_relation_which_questions_name_the_object_on_the_side_they_ask_about():
    """The "which" form (``kind="which"``): "what is {side}" is answered with the shape that stands on that side of
    the other in any scene drawn for the prompt; both sides of every relation are asked and either shape word is the
    answer about equally often; an unknown kind is refused."""
    from hieraquery_core.shapesworld import sample_relation_text_question, scene_for_prompt

    rng = np.random.default_rng(8)
    sides, firsts = set(), 0
    for _ in range(200):
        text, question, answer = sample_relation_text_question(rng, position_colours=0.5, kind="which")
        side = re.fullmatch(r"what is (to the left|to the right|above|below)", question).group(1)
        scene = scene_for_prompt(text, rng)
        named, other = (next(o for o in scene.objects if (o.shape == answer) == want) for want in (True, False))
        assert sw.relation_holds(named, other, sw.spec.RELATIONS[side if side in ("above", "below") else f"{side} of"]), (text, question, answer)
        sides.add(side)
        firsts += answer == sw.parse_prompt(text).objects[0].shape
    assert len(sides) == 4 and 70 < firsts < 130
    assert [sw.relation_which_question("a circle to the right of a square", word) for word in (False, True)] == [("what is to the right", "circle"), ("what is to the left", "square")]
    with pytest.raises(ValueError, match="which"):
        sample_relation_text_question(rng, kind="why")


def test_grounding_questions_answer_with_the_box_of_the_one_object_they_name():
    """The project's grounding question ("where is the {color} {shape}") is answered with that object's
    half-open box in pixels, is only asked of an object named uniquely, and parses back; its words are
    :data:`GROUNDING_WORDS`; a box answer agrees with the truth within the edit tolerance (same_place)."""
    from hieraquery_core.shapesworld.evaluate import same_place
    from hieraquery_core.shapesworld.understanding import GROUNDING_WORDS, answer_question, parse_box, sample_question

    rng = np.random.default_rng(9)
    for _ in range(100):
        scene, question, answer = sample_question(rng, kind="where")
        q = sw.parse_question(question)
        named = [o for o in scene.objects if (o.color, o.shape) == (q.color, q.shape)]
        assert q.kind == "where" and len(named) == 1 and parse_box(answer) == named[0].box
        assert set(question.split() + answer.split()) <= set(GROUNDING_WORDS) | {"is", "the", q.color, q.shape}
    twins = sw.Scene((obj("red", "circle", 2, 2), obj("red", "circle", 40, 40)))
    with pytest.raises(ValueError, match="exactly one red circle"):
        answer_question(twins, "where is the red circle")
    assert parse_box("a red circle") is None and parse_box("1 2 3") is None
    assert same_place((10, 10, 26, 26), (12, 8, 28, 24)) and not same_place((10, 10, 26, 26), (13, 10, 29, 26))
    assert not same_place((10, 10, 26, 26), (10, 10, 29, 26))  # a side 3 px longer
