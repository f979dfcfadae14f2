"""Edit instructions: (source scene, instruction, target scene) triplets.

Spec section "Edit instructions": recolor "make the {color} {shape} {color}", remove "remove the
{color} {shape}", add "add a {color} {shape}" (new object placed where it fits the placement rules),
restyle "make it outline style" / "make it filled" (every object changes style); everything not
named stays put; an instruction is only valid where it names exactly one object (restyle: any
image).

Project decisions: recolor must change the colour (same colour -> ``ValueError``); remove needs a
source of at least two objects (an image holds 1-4 objects); add needs a source of at most three
objects and room for the new one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import spec
from .scene import PlacementError, Scene, SceneObject, place_object, random_scene


@dataclass(frozen=True)
class Instruction:
    """A parsed edit instruction.

    ``kind`` is 'recolor', 'remove', 'add' or 'restyle'; ``color``/``shape`` name the object
    (recolor, remove) or the new object (add); ``new_color`` is recolor's target colour;
    ``style`` is restyle's target style.
    """

    kind: str
    color: str | None = None
    shape: str | None = None
    new_color: str | None = None
    style: str | None = None

    def text(self) -> str:
        """The instruction string (inverse of :func:`parse_instruction`)."""
        if self.kind == "recolor":
            return spec.EDIT_TEMPLATES["recolor"].format(color=self.color, shape=self.shape, new_color=self.new_color)
        if self.kind == "remove":
            return spec.EDIT_TEMPLATES["remove"].format(color=self.color, shape=self.shape)
        if self.kind == "add":
            return spec.EDIT_TEMPLATES["add"].format(color=self.color, shape=self.shape)
        if self.kind == "restyle":
            return spec.EDIT_TEMPLATES["restyle_outline" if self.style == "outline" else "restyle_filled"]
        raise ValueError(f"unknown edit kind {self.kind!r}")


@dataclass(frozen=True)
class EditTriplet:
    """One edit example: source scene, instruction string, target scene, and the edit kind."""

    source: Scene
    instruction: str
    target: Scene
    kind: str


_C = spec.COLOR_PATTERN
_S = spec.SHAPE_PATTERN
_RECOLOR = re.compile(rf"^make the ({_C}) ({_S}) ({_C})$")
_REMOVE = re.compile(rf"^remove the ({_C}) ({_S})$")
_ADD = re.compile(rf"^add a ({_C}) ({_S})$")


def parse_instruction(instruction: str) -> Instruction:
    """Parse an edit instruction string; ``ValueError`` for text outside the grammar."""
    text = instruction.strip()
    if text == spec.EDIT_TEMPLATES["restyle_outline"]:
        return Instruction("restyle", style="outline")
    if text == spec.EDIT_TEMPLATES["restyle_filled"]:
        return Instruction("restyle", style="filled")
    m = _RECOLOR.match(text)
    if m:
        return Instruction("recolor", m.group(1), m.group(2), new_color=m.group(3))
    m = _REMOVE.match(text)
    if m:
        return Instruction("remove", m.group(1), m.group(2))
    m = _ADD.match(text)
    if m:
        return Instruction("add", m.group(1), m.group(2))
    raise ValueError(
        f"cannot parse edit instruction {instruction!r}: expected 'make the <colour> <shape> <colour>', "
        "'remove the <colour> <shape>', 'add a <colour> <shape>', 'make it outline style' or 'make it filled'")


def find_named(objects: Sequence[object], color: str, shape: str, instruction: str) -> int:
    """Index of the single object that is ``color shape``; ``ValueError`` naming the problem
    when the instruction names no object or several."""
    hits = [i for i, o in enumerate(objects) if o.color == color and o.shape == shape]  # type: ignore[attr-defined]
    if not hits:
        present = ", ".join(f"{o.color} {o.shape}" for o in objects) or "nothing"  # type: ignore[attr-defined]
        raise ValueError(f"instruction {instruction!r} names no object: there is no {color} {shape} "
                         f"in the image (it holds: {present})")
    if len(hits) > 1:
        raise ValueError(f"instruction {instruction!r} is ambiguous: it names {len(hits)} objects "
                         f"(there are {len(hits)} {color} {shape}s); it must name exactly one")
    return hits[0]


def _default_rng(scene: Scene, instruction: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{scene.canonical()}#{instruction}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def check_instruction(objects: Sequence[object], instruction: str | Instruction) -> Instruction:
    """Validate an instruction against a list of objects (scene or parsed image objects).

    Returns the parsed instruction; raises ``ValueError`` naming the problem: no object or
    several objects named, a recolor to the same colour, a remove that would empty the image,
    an add to a full image.
    """
    text = instruction.text() if isinstance(instruction, Instruction) else instruction
    ins = instruction if isinstance(instruction, Instruction) else parse_instruction(instruction)
    if ins.kind in ("recolor", "remove"):
        find_named(objects, ins.color, ins.shape, text)  # type: ignore[arg-type]
    if ins.kind == "recolor" and ins.new_color == ins.color:
        raise ValueError(f"instruction {text!r} changes nothing: the object is already {ins.color}")
    if ins.kind == "remove" and len(objects) <= spec.MIN_OBJECTS:
        raise ValueError(f"instruction {text!r} would remove the only object; an image holds "
                         f"{spec.MIN_OBJECTS}-{spec.MAX_OBJECTS} objects")
    if ins.kind == "add" and len(objects) >= spec.MAX_OBJECTS:
        raise ValueError(f"instruction {text!r} cannot be applied: the image already holds "
                         f"{spec.MAX_OBJECTS} objects")
    return ins


def apply_instruction(scene: Scene, instruction: str, rng: np.random.Generator | None = None) -> Scene:
    """The target scene of an instruction; everything not named stays put.

    ``add`` places the new object at a random valid box (``rng``, or a generator seeded from a
    hash of the scene and instruction, so the result is deterministic by default).
    Raises ``ValueError`` with the reason for an invalid instruction (see
    :func:`check_instruction`), or :class:`PlacementError` (a ``ValueError``) when ``add`` finds no
    room.
    """
    ins = check_instruction(scene.objects, instruction)
    objs = list(scene.objects)
    if ins.kind == "restyle":
        return Scene(tuple(objs), ins.style)  # type: ignore[arg-type]
    if ins.kind == "recolor":
        i = find_named(objs, ins.color, ins.shape, instruction)  # type: ignore[arg-type]
        objs[i] = objs[i].with_color(ins.new_color)  # type: ignore[arg-type]
        return Scene(tuple(objs), scene.style)
    if ins.kind == "remove":
        i = find_named(objs, ins.color, ins.shape, instruction)  # type: ignore[arg-type]
        del objs[i]
        return Scene(tuple(objs), scene.style)
    # add
    rng = rng if rng is not None else _default_rng(scene, instruction)
    try:
        new = place_object(rng, ins.color, ins.shape, objs, tries=2000)  # type: ignore[arg-type]
    except PlacementError as exc:
        raise PlacementError(f"instruction {instruction!r} cannot be applied: {exc}") from exc
    return Scene(tuple(objs) + (new,), scene.style)


def unique_objects(scene: Scene) -> list[SceneObject]:
    """Objects whose colour+shape is unique in the scene (the ones an instruction can name)."""
    names = [o.name for o in scene.objects]
    return [o for o in scene.objects if names.count(o.name) == 1]


def shares_colour(obj: SceneObject, scene: Scene) -> bool:
    """Whether another object of ``scene`` has ``obj``'s colour (a distractor only the shape word tells apart)."""
    return any(o is not obj and o.color == obj.color for o in scene.objects)


def sample_edit(rng: np.random.Generator, kind: str | None = None, outline_prob: float = 0.5, distractor: bool = False) -> EditTriplet:
    """A random valid edit triplet (kind uniform over recolor/remove/add/restyle unless given).

    ``distractor`` (recolor and remove only; project option, not the spec's distribution): the named object
    shares its colour with another object of the source (:func:`shares_colour`), so that the instruction's
    shape word is needed to find it. See docs/demo-and-ablations.md section 3 ("which objects an edit
    changes") for why colour and not shape.
    """
    kind = kind if kind is not None else spec.EDIT_KINDS[int(rng.integers(len(spec.EDIT_KINDS)))]
    if kind not in spec.EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {spec.EDIT_KINDS}")
    for _ in range(1000):
        lo, hi = {"remove": (2, 4), "add": (1, 3)}.get(kind, (1, 4))
        source = random_scene(rng, int(rng.integers(lo, hi + 1)), outline_prob=outline_prob)
        if kind == "restyle":
            ins = Instruction("restyle", style="filled" if source.style == "outline" else "outline")
        elif kind == "add":
            ins = Instruction("add", spec.COLORS[int(rng.integers(len(spec.COLORS)))],
                              spec.SHAPES[int(rng.integers(len(spec.SHAPES)))])
        else:
            cands = [o for o in unique_objects(source) if not distractor or shares_colour(o, source)]
            if not cands:
                continue
            obj = cands[int(rng.integers(len(cands)))]
            if kind == "remove":
                ins = Instruction("remove", obj.color, obj.shape)
            else:
                others = [c for c in spec.COLORS if c != obj.color]
                ins = Instruction("recolor", obj.color, obj.shape, new_color=others[int(rng.integers(len(others)))])
        try:
            target = apply_instruction(source, ins.text(), rng)
        except PlacementError:
            continue
        return EditTriplet(source, ins.text(), target, kind)
    raise PlacementError(f"could not sample a {kind} edit")  # pragma: no cover


def edit_triplets(rng: np.random.Generator, kinds: Sequence[str] = spec.EDIT_KINDS, distractor_share: float = 0.0):
    """Endless generator of :class:`EditTriplet`, kinds uniformly at random from ``kinds``; a
    ``distractor_share`` of the recolor and remove triplets have a same-colour distractor (:func:`sample_edit`).
    With ``distractor_share`` 0 the stream is the spec's, draw for draw."""
    if not 0 <= distractor_share <= 1:
        raise ValueError(f"distractor_share {distractor_share} must be in [0, 1]")
    kinds = list(kinds)
    while True:
        kind = kinds[int(rng.integers(len(kinds)))]
        distractor = distractor_share > 0 and kind in ("recolor", "remove") and bool(rng.random() < distractor_share)
        yield sample_edit(rng, kind, distractor=distractor)
