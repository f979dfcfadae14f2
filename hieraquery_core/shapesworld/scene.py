"""Scenes: the objects of one ShapesWorld image and their random placement.

Spec sections "Canvas and rendering" (sizes, 1-4 objects, no overlap, >= 2 px gap between boxes,
>= 1 px canvas margin, one style per image) and "Relations" (centre thresholds).

Boxes are half-open pixel rectangles ``(x0, y0, x1, y1)``: the object covers pixel columns
``x0 .. x1-1`` and rows ``y0 .. y1-1``; its side is ``x1 - x0``; its centre is ``((x0+x1)/2,
(y0+y1)/2)`` in continuous canvas coordinates (a box's pixel extent, so the centre of a parsed
object's pixel box is comparable).  Two boxes have a gap of ``g`` background pixels when, along at
least one axis, ``other.x0 - this.x1 >= g`` (or the same vertically).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np

from . import spec

Box = tuple[int, int, int, int]


class PlacementError(ValueError):
    """Raised when objects cannot be placed under the spec's rules (rejection sampling failed)."""


class BoxCentre:
    """Centre of a half-open box ``(x0, y0, x1, y1)``, as the spec's relations measure it."""

    box: tuple[int, int, int, int]

    @property
    def cx(self) -> float:
        """Horizontal box centre (spec "Relations")."""
        return (self.box[0] + self.box[2]) / 2.0

    @property
    def cy(self) -> float:
        """Vertical box centre (spec "Relations")."""
        return (self.box[1] + self.box[3]) / 2.0

    @property
    def centre(self) -> tuple[float, float]:
        return (self.cx, self.cy)


@dataclass(frozen=True)
class SceneObject(BoxCentre):
    """One object: a palette colour name, a shape name and its box (x0, y0, x1, y1), half-open."""

    color: str
    shape: str
    box: Box

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def name(self) -> str:
        """``"{color} {shape}"``."""
        return f"{self.color} {self.shape}"

    def with_color(self, color: str) -> "SceneObject":
        return replace(self, color=color)


@dataclass(frozen=True)
class Scene:
    """The objects of one image (1-4) and the image's single style ('filled' or 'outline')."""

    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    style: str = spec.DEFAULT_STYLE

    def __post_init__(self) -> None:
        # accept any sequence, store a tuple so scenes are hashable and immutable
        object.__setattr__(self, "objects", tuple(self.objects))

    def __len__(self) -> int:
        return len(self.objects)

    def problems(self) -> list[str]:
        """Every way this scene breaks the spec (empty list when valid)."""
        out: list[str] = []
        n = len(self.objects)
        if not spec.MIN_OBJECTS <= n <= spec.MAX_OBJECTS:
            out.append(f"{n} objects (spec: {spec.MIN_OBJECTS}-{spec.MAX_OBJECTS})")
        if self.style not in spec.STYLES:
            out.append(f"unknown style {self.style!r}")
        for i, o in enumerate(self.objects):
            if o.color not in spec.PALETTE:
                out.append(f"object {i}: unknown colour {o.color!r}")
            if o.shape not in spec.SHAPES:
                out.append(f"object {i}: unknown shape {o.shape!r}")
            if not box_size_ok(o.box, o.shape):
                out.append(f"object {i}: box {o.box} has a side outside {spec.MIN_SIDE}-{spec.MAX_SIDE}"
                           " (or is not square)")
            if not box_inside(o.box):
                out.append(f"object {i}: box {o.box} is not inside the canvas with a "
                           f"{spec.MIN_MARGIN} px margin")
        for i in range(n):
            for j in range(i + 1, n):
                if box_gap(self.objects[i].box, self.objects[j].box) < spec.MIN_GAP:
                    out.append(f"objects {i} and {j}: boxes closer than {spec.MIN_GAP} px")
        return out

    def is_valid(self) -> bool:
        """True when the scene follows every placement rule of the spec."""
        return not self.problems()

    def with_style(self, style: str) -> "Scene":
        return Scene(self.objects, style)

    def canonical(self) -> str:
        """A stable text form (objects sorted), used for hashing and equality up to order."""
        objs = sorted(self.objects, key=lambda o: (o.box, o.color, o.shape))
        body = ";".join(f"{o.color} {o.shape} {o.box[0]} {o.box[1]} {o.box[2]} {o.box[3]}" for o in objs)
        return f"{self.style}|{body}"

    def left_to_right(self) -> list[SceneObject]:
        """Objects sorted by box centre x (ties: centre y, then colour, shape)."""
        return sorted(self.objects, key=lambda o: (o.cx, o.cy, o.color, o.shape))


# --- geometry rules --------------------------------------------------------------------------

def box_size_ok(box: Box, shape: str | None = None) -> bool:
    """Box sides within [MIN_SIDE, MAX_SIDE].

    Project decision: every shape has a square box (one "side"); for a triangle that means base
    equals height.  The scene sampler only produces square boxes; the check enforces it.
    """
    w, h = box[2] - box[0], box[3] - box[1]
    return spec.MIN_SIDE <= w <= spec.MAX_SIDE and spec.MIN_SIDE <= h <= spec.MAX_SIDE and w == h


def box_inside(box: Box, canvas: int = spec.CANVAS, margin: int = spec.MIN_MARGIN) -> bool:
    """Box inside the canvas with ``margin`` background pixels on every side."""
    x0, y0, x1, y1 = box
    return x0 >= margin and y0 >= margin and x1 <= canvas - margin and y1 <= canvas - margin


def box_gap(a: Box, b: Box) -> int:
    """Number of background pixels separating two boxes (negative or 0 when they touch/overlap).

    The gap is the larger of the horizontal and vertical separations.
    """
    gx = max(b[0] - a[2], a[0] - b[2])
    gy = max(b[1] - a[3], a[1] - b[3])
    return max(gx, gy)


def relation_holds(a: SceneObject | object, b: SceneObject | object, relation: str,
                   threshold: float = spec.RELATION_THRESHOLD) -> bool:
    """``a`` is ``relation`` ('left', 'right', 'above', 'below') of ``b`` (spec "Relations").

    Works for anything with ``cx``/``cy`` attributes (scene objects and detected objects).
    Image y grows downwards, so "above" means a smaller centre y.
    """
    if relation == "left":
        return b.cx - a.cx >= threshold  # type: ignore[attr-defined]
    if relation == "right":
        return a.cx - b.cx >= threshold  # type: ignore[attr-defined]
    if relation == "above":
        return b.cy - a.cy >= threshold  # type: ignore[attr-defined]
    if relation == "below":
        return a.cy - b.cy >= threshold  # type: ignore[attr-defined]
    raise ValueError(f"unknown relation {relation!r}; expected one of left, right, above, below")


# --- random placement ------------------------------------------------------------------------

def random_box(rng: np.random.Generator, side: int | None = None) -> Box:
    """A square box of random side (14..22) at a random position inside the canvas margin."""
    s = int(rng.integers(spec.MIN_SIDE, spec.MAX_SIDE + 1)) if side is None else int(side)
    lo = spec.MIN_MARGIN
    hi = spec.CANVAS - spec.MIN_MARGIN - s  # inclusive upper bound for x0
    x0 = int(rng.integers(lo, hi + 1))
    y0 = int(rng.integers(lo, hi + 1))
    return (x0, y0, x0 + s, y0 + s)


def fits(box: Box, others: Iterable[Box], min_gap: int = spec.MIN_GAP) -> bool:
    """``box`` is inside the canvas and keeps ``min_gap`` background pixels (the spec's minimum by default) to every
    other box."""
    return box_inside(box) and all(box_gap(box, o) >= min_gap for o in others)


def place_object(rng: np.random.Generator, color: str, shape: str, existing: Sequence[SceneObject],
                 tries: int = 500, min_gap: int = spec.MIN_GAP) -> SceneObject:
    """Place one new object among ``existing`` ones (rejection sampling), ``min_gap`` pixels from each.

    Raises :class:`PlacementError` when no valid box was found in ``tries`` attempts.
    """
    boxes = [o.box for o in existing]
    for _ in range(tries):
        box = random_box(rng)
        if fits(box, boxes, min_gap):
            return SceneObject(color, shape, box)
    raise PlacementError(
        f"could not place a {color} {shape} among {len(existing)} existing objects after {tries} tries "
        "(the canvas has no room left under the size/gap/margin rules)")


def place_objects(rng: np.random.Generator, kinds: Sequence[tuple[str, str]], style: str = "filled",
                  relation: tuple[int, str, int] | None = None, restarts: int = 200,
                  tries_per_object: int = 200, min_gap: int = spec.MIN_GAP) -> Scene:
    """Place objects of the given ``(color, shape)`` kinds in a new valid scene.

    ``relation=(i, rel, j)`` additionally requires object ``i`` to be ``rel`` of object ``j``. ``min_gap``: background
    pixels between any two boxes, at least the spec's 2 (a wider gap is still a valid scene; training data may ask for
    one so that neighbours stay apart at the 16 px scale, docs/shapesworld.md).
    Rejection sampling: objects are placed one at a time; a failed object restarts the scene.
    Raises :class:`PlacementError` with the reason when every restart failed (e.g. more than
    ``MAX_OBJECTS`` objects, or an impossible relation).
    """
    if not spec.MIN_OBJECTS <= len(kinds) <= spec.MAX_OBJECTS:
        raise PlacementError(f"cannot place {len(kinds)} objects: a scene has "
                             f"{spec.MIN_OBJECTS}-{spec.MAX_OBJECTS} objects")
    for color, shape in kinds:
        if color not in spec.PALETTE or shape not in spec.SHAPES:
            raise PlacementError(f"unknown object kind {color!r} {shape!r}")
    if style not in spec.STYLES:
        raise PlacementError(f"unknown style {style!r}")
    if min_gap < spec.MIN_GAP:
        raise PlacementError(f"a gap of {min_gap} px between boxes breaks the spec; give at least {spec.MIN_GAP}")
    for _ in range(restarts):
        placed: list[SceneObject] = []
        ok = True
        for color, shape in kinds:
            try:
                placed.append(place_object(rng, color, shape, placed, tries_per_object, min_gap))
            except PlacementError:
                ok = False
                break
        if not ok:
            continue
        if relation is not None:
            i, rel, j = relation
            if not relation_holds(placed[i], placed[j], rel):
                continue
        return Scene(tuple(placed), style)
    raise PlacementError(f"could not place {len(kinds)} objects"
                         + (f" with relation {relation}" if relation else "")
                         + f" after {restarts} restarts")


def random_scene(rng: np.random.Generator, n_objects: int | None = None, style: str | None = None,
                 outline_prob: float = 0.5) -> Scene:
    """A random valid scene: 1-4 objects of random colour/shape, random style."""
    n = int(rng.integers(spec.MIN_OBJECTS, spec.MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if style is None:
        style = "outline" if rng.random() < outline_prob else "filled"
    kinds = [(spec.COLORS[int(rng.integers(len(spec.COLORS)))], spec.SHAPES[int(rng.integers(len(spec.SHAPES)))])
             for _ in range(n)]
    return place_objects(rng, kinds, style)
