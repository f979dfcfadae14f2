"""The GenEval-style scorer: parse images into objects, score prompts, edits and scale agreement.

Spec section "Scoring (GenEval style)": each non-white connected region is assigned to the nearest
palette colour, classified by shape from the fill ratio of its box (circle ~0.785, square ~1.0,
triangle ~0.5; outline style by its hollow interior) and located by its box centre; a prompt is
correct when the parsed objects satisfy it exactly; category score = fraction correct; overall =
mean of the six category scores; an edit is correct when the parsed target equals the parsed source
with exactly the instructed change.

Parsing details (project decisions, documented in ``docs/shapesworld.md``):

* Colour: each pixel is unmixed as ``white - alpha * (white - palette colour)`` for the palette
  colour that fits best (least residual); a pixel is *ink* when that ``alpha >= 0.5`` (so a pixel
  half-blended with white by anti-aliasing or downsampling still counts).  A region's colour is the
  alpha-weighted vote of its pixels.
* Regions: 8-connected components of ink (labelled with a run-length union-find, numpy + plain
  Python; no scipy).  Components smaller than ``MIN_COMPONENT_AREA`` = 20 px (at 64x64; the
  smallest real object has ~90 px) are ignored as noise.
* Holes: background pixels inside the region's box that are not 4-connected to the box border.
  Style is 'outline' when the hole area is at least ``max(4 px, 4 %)`` of the filled area (the
  smallest outline triangle's hole is ~11 %).  Shape uses the fill ratio of the *filled* region
  (region + holes) over its box: < 0.68 triangle, < 0.90 circle, else square (renders measure
  0.545-0.571, 0.787-0.796 and 1.0).
* Lower resolutions: a smaller square image is first upsampled bilinearly to 64x64, so all
  thresholds and coordinates stay in 64-px units (best effort: at 16x16 objects are 3-5 px).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from . import spec
from .edits import Instruction, check_instruction, find_named, parse_instruction
from .prompts import parse_prompt
from .render import downscale
from .scene import BoxCentre, relation_holds

MIN_COMPONENT_AREA = 20
"""Ink components with fewer pixels (in 64x64 units) are noise and ignored."""
INK_ALPHA = 0.5
"""A pixel is ink when its unmixed palette coverage is at least this."""
OUTLINE_HOLE_FRACTION = 0.04
OUTLINE_HOLE_MIN = 4
TRIANGLE_MAX_RATIO = 0.68
CIRCLE_MAX_RATIO = 0.90
EDIT_POSITION_TOLERANCE = 2.0
"""Edits: an object "stays put" when its box centre moves by <= 2 px and each box side changes by
<= 2 px along both axes (64-px units)."""

_WHITE = np.array(spec.BACKGROUND, dtype=np.float64)
_COLOR_NAMES = spec.COLORS
_D = _WHITE[None, :] - np.array([spec.PALETTE[c] for c in _COLOR_NAMES], dtype=np.float64)  # (6, 3)
_D_NORM2 = (_D ** 2).sum(axis=1)  # (6,)


@dataclass(frozen=True)
class DetectedObject(BoxCentre):
    """An object parsed from an image (coordinates in 64x64 canvas units, box half-open)."""

    color: str
    shape: str
    style: str
    box: tuple[int, int, int, int]
    area: int
    hole_area: int
    fill_ratio: float


# --- connected components -------------------------------------------------------------------

def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label connected components of a boolean 2-D mask (4- or 8-connectivity).

    Returns ``(labels, n)``: int32 labels with 0 for background and 1..n for components (in
    raster order of their first run).  Run-length encoding + union-find; no scipy needed.
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    labels = np.zeros((h, w), dtype=np.int32)
    n_runs = len(rows)
    if n_runs == 0:
        return labels, 0
    rows_l, starts_l, ends_l = rows.tolist(), starts.tolist(), ends.tolist()
    row_first = np.searchsorted(rows, np.arange(h + 1)).tolist()
    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    slack = 1 if connectivity == 8 else 0
    for r in range(1, h):
        i, i_end = row_first[r - 1], row_first[r]
        j, j_end = row_first[r], row_first[r + 1]
        while i < i_end and j < j_end:
            if starts_l[i] < ends_l[j] + slack and starts_l[j] < ends_l[i] + slack:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends_l[i] < ends_l[j]:
                i += 1
            else:
                j += 1
    comp: dict[int, int] = {}
    for k in range(n_runs):
        root = find(k)
        lab = comp.get(root)
        if lab is None:
            lab = comp[root] = len(comp) + 1
        labels[rows_l[k], starts_l[k]:ends_l[k]] = lab
    return labels, len(comp)


def _hole_area(component: np.ndarray) -> int:
    """Background pixels enclosed by a component (mask cropped to its box)."""
    h, w = component.shape
    bg = np.ones((h + 2, w + 2), dtype=bool)
    bg[1:-1, 1:-1] = ~component
    labels, n = label_components(bg, connectivity=4)
    if n <= 1:
        return 0
    outside = labels[0, 0]
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    return int(counts[1:].sum() - counts[outside])


# --- image parsing ---------------------------------------------------------------------------

def _upsample_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]

    def coords(n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(size) + 0.5) * (n_src / size) - 0.5
        x = np.clip(x, 0, n_src - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n_src - 1)
        return i0, i1, x - i0

    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def _as_canvas(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {img.dtype}")
    h, w = img.shape[:2]
    if h != w:
        raise ValueError(f"expected a square image, got {h}x{w}")
    f = img.astype(np.float64)
    if h != spec.CANVAS:
        f = _upsample_bilinear(f, spec.CANVAS)
    return f


def _unmix(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: best palette index and its coverage alpha (0 = white, 1 = exact colour)."""
    q = (_WHITE - img).reshape(-1, 3)  # (N, 3)
    dots = q @ _D.T  # (N, 6)
    pos = np.maximum(dots, 0.0)
    resid = (q ** 2).sum(axis=1)[:, None] - pos ** 2 / _D_NORM2[None, :]
    best = np.argmin(resid, axis=1)
    alpha = pos[np.arange(len(best)), best] / _D_NORM2[best]
    return best.reshape(img.shape[:2]), alpha.reshape(img.shape[:2])


def classify_shape(fill_ratio: float) -> str:
    """Shape from the filled region's box fill ratio (triangle ~0.5, circle ~0.785, square ~1)."""
    if fill_ratio < TRIANGLE_MAX_RATIO:
        return "triangle"
    if fill_ratio < CIRCLE_MAX_RATIO:
        return "circle"
    return "square"


def parse_image(image: np.ndarray) -> list[DetectedObject]:
    """Parse a uint8 [H, W, 3] image (64x64, or a smaller square scale) into detected objects.

    Objects are returned in raster order of their top-left pixel.
    """
    img = _as_canvas(image)
    best, alpha = _unmix(img)
    ink = alpha >= INK_ALPHA
    labels, n = label_components(ink, connectivity=8)
    if n == 0:
        return []
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)
    votes = np.bincount(flat * len(_COLOR_NAMES) + best.ravel(), weights=alpha.ravel(),
                        minlength=(n + 1) * len(_COLOR_NAMES)).reshape(n + 1, len(_COLOR_NAMES))
    out: list[DetectedObject] = []
    for lab in range(1, n + 1):
        area = int(areas[lab])
        if area < MIN_COMPONENT_AREA:
            continue
        ys, xs = np.nonzero(labels == lab)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        comp = labels[y0:y1, x0:x1] == lab
        hole = _hole_area(comp)
        filled = area + hole
        ratio = filled / float((x1 - x0) * (y1 - y0))
        style = "outline" if hole >= max(OUTLINE_HOLE_MIN, OUTLINE_HOLE_FRACTION * filled) else "filled"
        color = _COLOR_NAMES[int(np.argmax(votes[lab]))]
        out.append(DetectedObject(color, classify_shape(ratio), style, (x0, y0, x1, y1), area, hole, ratio))
    return out


# --- prompts -------------------------------------------------------------------------------

def score_prompt(prompt: str, image: np.ndarray) -> bool:
    """True when the parsed image satisfies the prompt exactly (count, colours, shapes, relation,
    style of every object)."""
    return parse_prompt(prompt).matches(parse_image(image), None)


def geneval(results: Iterable[tuple[str, str, np.ndarray]]) -> dict[str, float]:
    """GenEval-style scores of (category, prompt, image) results.

    Returns ``{category: fraction correct}`` for every category present and ``overall`` = the mean
    of the category scores (the six categories when all are present, as in GenEval).
    """
    hits: dict[str, list[bool]] = defaultdict(list)
    for category, prompt, image in results:
        if category not in spec.CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {spec.CATEGORIES}")
        hits[category].append(score_prompt(prompt, image))
    if not hits:
        raise ValueError("no results to score")
    scores = {c: float(np.mean(hits[c])) for c in spec.CATEGORIES if c in hits}
    scores["overall"] = float(np.mean(list(scores.values())))
    return scores


def attribute_accuracy(results: Iterable[tuple[str, np.ndarray]]) -> dict[str, float]:
    """Which attribute fails, beside :func:`geneval` (a project diagnostic; GenEval itself only says pass/fail).

    For (prompt, image) results: ``count`` is the fraction of images with the prompt's number of
    objects; among those, ``shape`` is the fraction whose detected shapes equal the prompt's (as a
    multiset), ``color`` the fraction that contain every colour the prompt names (prompts naming a
    colour only) and ``style`` the fraction whose objects all have the prompt's style. ``n_counted``
    is how many images the three conditional figures are over.
    """
    counted = shapes = styles = 0
    colors: list[bool] = []
    total = 0
    for prompt, image in results:
        total += 1
        want = parse_prompt(prompt)
        objects = parse_image(image)
        if len(objects) != len(want.objects):
            continue
        counted += 1
        shapes += Counter(o.shape for o in objects) == Counter(s.shape for s in want.objects)
        styles += all(o.style == want.style for o in objects)
        named = Counter(s.color for s in want.objects if s.color is not None)
        if named:
            colors.append(named <= Counter(o.color for o in objects))
    if total == 0:
        raise ValueError("no results to score")

    def share(hits: int) -> float:
        return hits / counted if counted else 0.0

    return {"count": counted / total, "shape": share(shapes), "color": float(np.mean(colors)) if colors else 0.0,
            "style": share(styles), "n_counted": counted}


SHAPE_BINDINGS = ("right", "first shape twice", "second shape twice", "other")
"""What an image of two objects painted for a prompt naming two different shapes (:func:`shape_binding`)."""


def shape_binding(results: Iterable[tuple[str, np.ndarray]]) -> dict[str, float | int]:
    """Which shapes two-object images carry (a project diagnostic beside :func:`attribute_accuracy`).

    Of (prompt, image) results whose prompt names exactly two objects of different shapes ("a circle and a square",
    "a red circle to the left of a blue square") and whose image has two objects: the share of each
    :data:`SHAPE_BINDINGS` outcome (both shapes right; the shape named first, or second, painted on both objects;
    anything else), and ``n`` = how many images that is. A model that does not bind each shape to its own object
    paints one of the named shapes twice, as text-to-image models "leak" attributes between objects.
    ``first named on the left``: of the right images, the share whose left object (by box centre x) has the shape named
    first, as in a caption (about a half for a model that places them either way; 1 for one trained in caption order,
    ``train_pairs(caption_order=True)``).
    """
    outcomes: Counter = Counter()
    first_left = 0
    for prompt, image in results:
        wanted = [o.shape for o in parse_prompt(prompt).objects]
        if len(wanted) != 2 or wanted[0] == wanted[1]:
            continue
        objects = parse_image(image)
        painted = sorted(o.shape for o in objects)
        if len(painted) != 2:
            continue
        by_outcome = {"right": sorted(wanted), "first shape twice": [wanted[0]] * 2, "second shape twice": [wanted[1]] * 2}
        outcome = next((k for k, v in by_outcome.items() if v == painted), "other")
        outcomes[outcome] += 1
        first_left += outcome == "right" and min(objects, key=lambda o: (o.cx, o.cy)).shape == wanted[0]
    n = sum(outcomes.values())
    return {**{k: outcomes[k] / n if n else 0.0 for k in SHAPE_BINDINGS}, "n": n,
            "first named on the left": first_left / outcomes["right"] if outcomes["right"] else 0.0}


PLACEMENTS = ("as named", "opposite", "other axis", "too close")
"""Where a position image put the first-named object against the second (:func:`relation_placement`)."""
OTHER_AXIS = {"left": ("above", "below"), "right": ("above", "below"), "above": ("left", "right"), "below": ("left", "right")}


def relation_placement(results: Iterable[tuple[str, np.ndarray]]) -> dict[str, float | int | dict]:
    """Where position images put the two objects (a project diagnostic beside :func:`shape_binding`).

    Of (prompt, image) results whose prompt relates two different shapes ("a circle above a square") and whose image
    has exactly those two shapes: the share of each :data:`PLACEMENTS` outcome, checked in that order with the spec's
    12 px rule: the relation holds; the first-named object stands on the opposite side ("below" for "above"); only
    on the other axis (beside the square for "above"); neither (the centres closer than 12 px both ways). ``n`` = how
    many images; ``by relation``: for each relation, the share as named and its ``n``. GenEval's position score also
    fails images with the wrong objects; this says, of those with the right ones, what the relation got wrong.
    """
    outcomes: Counter = Counter()
    by_relation: dict[str, Counter] = defaultdict(Counter)
    for prompt, image in results:
        req = parse_prompt(prompt)
        wanted = [o.shape for o in req.objects]
        if req.relation is None or wanted[0] == wanted[1]:
            continue
        objects = parse_image(image)
        if sorted(o.shape for o in objects) != sorted(wanted):
            continue
        first, second = (next(o for o in objects if o.shape == shape) for shape in wanted)
        outcome = ("as named" if relation_holds(first, second, req.relation) else
                   "opposite" if relation_holds(first, second, spec.OPPOSITE_RELATION[req.relation]) else
                   "other axis" if any(relation_holds(first, second, r) for r in OTHER_AXIS[req.relation]) else "too close")
        outcomes[outcome] += 1
        by_relation[req.relation][outcome == "as named"] += 1
    n = sum(outcomes.values())
    return {**{k: outcomes[k] / n if n else 0.0 for k in PLACEMENTS}, "n": n,
            "by relation": {r: {"as named": c[True] / (c[True] + c[False]), "n": c[True] + c[False]} for r, c in sorted(by_relation.items())}}


# --- edits ---------------------------------------------------------------------------------

def same_place(a: tuple[int, int, int, int], b: tuple[int, int, int, int], tol: float = EDIT_POSITION_TOLERANCE) -> bool:
    """Two half-open boxes whose centres and sides differ by at most ``tol`` px along both axes (an object that
    "stays put", ``EDIT_POSITION_TOLERANCE``)."""
    return (abs((a[0] + a[2]) - (b[0] + b[2])) / 2.0 <= tol and abs((a[1] + a[3]) - (b[1] + b[3])) / 2.0 <= tol
            and abs((a[2] - a[0]) - (b[2] - b[0])) <= tol and abs((a[3] - a[1]) - (b[3] - b[1])) <= tol)


def _is(obj: DetectedObject, color: str, shape: str, style: str | None, box: tuple[int, int, int, int] | None, tolerance: float) -> bool:
    """``obj`` has this colour and shape, this style (None: any) and sits at ``box`` (None: anywhere)."""
    return (obj.color == color and obj.shape == shape and (style is None or obj.style == style)
            and (box is None or same_place(obj.box, box, tolerance)))


def edit_correct(source_image: np.ndarray, instruction: str, target_image: np.ndarray,
                 tolerance: float = EDIT_POSITION_TOLERANCE) -> bool:
    """True when the parsed target equals the parsed source with exactly the instructed change.

    Unchanged objects must keep colour, shape and style and stay put (box centre and sides within
    ``tolerance`` px); a recoloured object keeps its place and shape; an added object may be
    anywhere (it must be a new object of the named colour and shape, every object in the target's
    style); restyle keeps every object in place with the new style.
    Raises ``ValueError`` when the instruction is not valid for the parsed *source* (names no
    object or several, ...): that is a bad benchmark item, not a wrong model output.
    """
    src = parse_image(source_image)
    _, expected, style, _ = _expected_after(src, instruction)
    return _matches(parse_image(target_image), expected, style, tolerance)


def _expected_after(src: Sequence[DetectedObject], instruction: str) -> tuple[Instruction, list[tuple[str, str, tuple[int, int, int, int] | None]], str, int | None]:
    """The parsed instruction and what a correct edit of the parsed source holds: (colour, shape, box or None
    for "anywhere") per object, the image's style, and the index of the named source object (recolor,
    remove; else None)."""
    ins = check_instruction(src, instruction)
    style = src[0].style if src else spec.DEFAULT_STYLE
    expected: list[tuple[str, str, tuple[int, int, int, int] | None]] = [(o.color, o.shape, o.box) for o in src]
    named = find_named(src, ins.color, ins.shape, instruction) if ins.kind in ("recolor", "remove") else None  # type: ignore[arg-type]
    if ins.kind == "restyle":
        style = ins.style  # type: ignore[assignment]
    elif ins.kind == "recolor":
        expected[named] = (ins.new_color, expected[named][1], expected[named][2])  # type: ignore[index, assignment]
    elif ins.kind == "remove":
        del expected[named]  # type: ignore[arg-type]
    else:
        expected.append((ins.color, ins.shape, None))  # type: ignore[arg-type]
    return ins, expected, style, named


EDIT_OUTCOMES = ("correct", "change not made", "rest changed", "both wrong")
""":func:`edit_outcome`'s answers."""


def edit_outcome(source_image: np.ndarray, instruction: str, output_image: np.ndarray,
                 tolerance: float = EDIT_POSITION_TOLERANCE) -> str:
    """Which half of an edit failed, one of :data:`EDIT_OUTCOMES` (a diagnostic beside :func:`edit_correct`).

    The *change* is the instruction's own part: the named object recoloured in place, gone, a new object of
    the named colour and shape, or (restyle) every object in the new style. The *rest* is everything else:
    every other source object kept (colour, shape, style, in place) and nothing extra. "change not made"
    with the rest intact is an instruction not followed (or the wrong object picked, which also changes the
    rest: "both wrong"); "rest changed" is collateral damage around a change that was made.
    """
    src, out = parse_image(source_image), parse_image(output_image)
    ins, expected, style, named = _expected_after(src, instruction)
    if _matches(out, expected, style, tolerance):  # edit_correct on the images parsed here
        return "correct"
    unused = list(out)

    def take(color: str, shape: str, box: tuple[int, int, int, int] | None, want_style: str | None) -> bool:
        for o in unused:
            if _is(o, color, shape, want_style, box, tolerance):
                unused.remove(o)
                return True
        return False

    rest_kept = all([take(o.color, o.shape, o.box, None if ins.kind == "restyle" else style) for i, o in enumerate(src) if i != named])
    if ins.kind == "restyle":
        change = all(o.style == style for o in out)
    elif ins.kind == "add":  # a new object of the named colour and shape, anywhere
        change = take(*expected[-1], style)
    else:  # recolor, remove: what is left where the named object was is the named object's, not an extra
        x0, y0, x1, y1 = src[named].box  # type: ignore[index]
        there = [o for o in unused if x0 <= o.cx <= x1 and y0 <= o.cy <= y1]
        unused = [o for o in unused if o not in there]
        change = not there if ins.kind == "remove" else any(_is(o, ins.new_color, src[named].shape, style, src[named].box, tolerance) for o in there)
    if change:
        return "rest changed"
    return "change not made" if rest_kept and not unused else "both wrong"


def _matches(tgt: Sequence[DetectedObject], expected: Sequence[tuple[str, str, tuple[int, int, int, int] | None]],
             style: str, tolerance: float | None) -> bool:
    """The detected objects are the expected ones (colour, shape; in place where a box is given and
    ``tolerance`` is not None), one to one, all in ``style``."""
    if len(tgt) != len(expected) or any(o.style != style for o in tgt):
        return False
    for perm in itertools.permutations(range(len(tgt))):
        if all(tgt[p].color == c and tgt[p].shape == s and (box is None or tolerance is None or same_place(tgt[p].box, box, tolerance))
               for (c, s, box), p in zip(expected, perm)):
            return True
    return False


def _reconstructed(src: Sequence[DetectedObject], out: Sequence[DetectedObject], tolerance: float | None) -> bool:
    style = src[0].style if src else spec.DEFAULT_STYLE
    return _matches(out, [(o.color, o.shape, o.box) for o in src], style, tolerance)


def reconstruction_correct(source_image: np.ndarray, output_image: np.ndarray, tolerance: float | None = EDIT_POSITION_TOLERANCE) -> bool:
    """True when the output parses into the source's objects: same colours, shapes and style, each in
    place (as :func:`edit_correct`'s unchanged objects) unless ``tolerance`` is None.

    The paper's reconstruction stage (section 4.2) is there to "make the output of the model consistent
    with the input"; this is that consistency, the part of every edit that must not change.
    """
    return _reconstructed(parse_image(source_image), parse_image(output_image), tolerance)


def reconstruction_accuracy(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Of (source_image, output_image) pairs: ``in_place`` (:func:`reconstruction_correct`) and
    ``objects`` (the same objects anywhere) accuracy. Each image is parsed once."""
    parsed = [(parse_image(s), parse_image(o)) for s, o in pairs]
    if not parsed:
        raise ValueError("no pairs to score")
    return {"in_place": float(np.mean([_reconstructed(s, o, EDIT_POSITION_TOLERANCE) for s, o in parsed])),
            "objects": float(np.mean([_reconstructed(s, o, None) for s, o in parsed]))}


def edit_accuracy(results: Iterable[tuple[np.ndarray, str, np.ndarray]]) -> dict[str, float]:
    """Accuracy of (source_image, instruction, target_image) results.

    Returns ``{kind: accuracy}`` for each edit kind present and ``overall`` = fraction of all items
    correct.
    """
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for source, instruction, target in results:
        kind = parse_instruction(instruction).kind
        by_kind[kind].append(edit_correct(source, instruction, target))
    if not by_kind:
        raise ValueError("no results to score")
    out = {k: float(np.mean(by_kind[k])) for k in spec.EDIT_KINDS if k in by_kind}
    out["overall"] = float(np.mean([x for v in by_kind.values() for x in v]))
    return out


def edit_outcomes(results: Iterable[tuple[np.ndarray, str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Of (source_image, instruction, output_image) results: per edit kind, the share of each
    :func:`edit_outcome` (which half of the failed edits failed)."""
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for source, instruction, output in results:
        by_kind[parse_instruction(instruction).kind][edit_outcome(source, instruction, output)] += 1
    if not by_kind:
        raise ValueError("no results to score")
    return {k: {o: by_kind[k][o] / sum(by_kind[k].values()) for o in EDIT_OUTCOMES} for k in spec.EDIT_KINDS if k in by_kind}


RELATIONS = ("same colour", "same shape", "neither")
"""How an unnamed object relates to the object a recolor or remove names (:func:`edit_collateral`); an
instruction names a unique colour and shape, so no other object shares both."""


def relation_to(obj: DetectedObject, named: DetectedObject) -> str:
    """``obj``'s :data:`RELATIONS` entry with respect to ``named``."""
    return "same colour" if obj.color == named.color else "same shape" if obj.shape == named.shape else "neither"


def edit_collateral(results: Iterable[tuple[np.ndarray, str, np.ndarray]], tolerance: float = EDIT_POSITION_TOLERANCE) -> dict[str, dict[str, float | None]]:
    """Which objects a recolor or remove touches besides the named one: for each kind, the share of the other
    source objects that are not kept (no output object of the same colour, shape and style in place), by
    their relation to the named object (:data:`RELATIONS`; None where the results hold no such object).

    A model that finds the named object by its colour alone changes "same colour" objects far more often
    than "neither" ones; one that ignores the instruction's object changes all three alike. A diagnostic
    beside :func:`edit_outcome`, not a score of the spec.
    """
    counts: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for source, instruction, output in results:
        src, out = parse_image(source), parse_image(output)
        ins, _, _, named = _expected_after(src, instruction)
        if named is None:
            continue
        for i, o in enumerate(src):
            if i != named:
                kept = any(_is(p, o.color, o.shape, o.style, o.box, tolerance) for p in out)
                counts[ins.kind][relation_to(o, src[named])].append(not kept)
    return {k: {r: float(np.mean(counts[k][r])) if counts[k][r] else None for r in RELATIONS} for k in ("recolor", "remove") if k in counts}

# --- scales --------------------------------------------------------------------------------

def scale_agreement(coarse: np.ndarray, reference: np.ndarray) -> float:
    """Agreement in [0, 1] of two same-size images, measured on their departure from white.

    ``1 - |a - b|_1 / (|a - white|_1 + |b - white|_1)``: 1 for identical images, 0 when their
    ink is disjoint (by the triangle inequality it never leaves [0, 1]); two blank images agree.
    """
    a = np.asarray(coarse, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    denom = np.abs(a - _WHITE).sum() + np.abs(b - _WHITE).sum()
    if denom == 0:
        return 1.0
    return float(1.0 - np.abs(a - b).sum() / denom)


def cross_scale_consistency(images_by_scale: Mapping[int, np.ndarray] | Sequence[np.ndarray]) -> float:
    """How well the coarse images agree with the final (largest) one, in [0, 1].

    The final image is area-downsampled to each coarse size and compared with that coarse image by
    :func:`scale_agreement`; the result is the mean over the coarse scales (1.0 when there is
    only one image).
    """
    images = list(images_by_scale.values()) if isinstance(images_by_scale, Mapping) else list(images_by_scale)
    if not images:
        raise ValueError("no images")
    images = sorted((np.asarray(i) for i in images), key=lambda i: i.shape[0])
    final = images[-1]
    coarse = images[:-1]
    if not coarse:
        return 1.0
    return float(np.mean([scale_agreement(c, downscale(final, c.shape[0])) for c in coarse]))
