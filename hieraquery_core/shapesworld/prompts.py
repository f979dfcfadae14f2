"""The prompt grammar: GenEval-style prompts, captions, parsing, and the held-out split.

Spec section "Prompts" (templates and their GenEval categories, count words, plurals, the optional
", outline style" suffix) and "Understanding" (captions list objects left to right).

Project decisions (documented in ``docs/shapesworld.md``):

* A prompt is satisfied *exactly*: the image holds exactly the named objects (spec "Scoring"), so a
  prompt's scene contains nothing else.
* two_object / position / color_attr prompts name two objects of *different* shapes (as GenEval
  names two different object classes); color_attr also uses two different colours.
* Held-out split.  Categories with many distinct prompt strings (position: 48, color_attr: 360)
  are split by prompt: ``is_held_out(prompt)`` is a stable SHA-256 hash of the prompt string,
  1 in 5 held out (13 position and 72 color_attr prompts).  single_object (42), colors (36),
  counting (18) and two_object (12: the template's colours are free, so only ordered shape pairs
  x style) are too small to hold prompts out; for them the held-out evaluation uses scenes from
  a separate seed stream *and* only scenes whose layout hash is held out
  (``is_held_out_scene``), which ``train_pairs`` never yields for those categories.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from . import spec
from .scene import Scene, SceneObject, place_objects, relation_holds

HOLDOUT_MODULUS = 5
"""1 in HOLDOUT_MODULUS prompts (or scenes) is held out."""
PROMPT_SPLIT_CATEGORIES: tuple[str, ...] = ("position", "color_attr")
"""Categories whose held-out split is by prompt string."""
SCENE_SPLIT_CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors")
"""Categories whose held-out split is by scene (disjoint seed stream + scene hash)."""
HELDOUT_STREAM_TAG = 0x48454C44  # "HELD": mixes into the seed of the held-out scene stream


# --- structured requirements -------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectSpec:
    """One named object of a prompt: a shape and a colour (``None`` = colour free)."""

    color: str | None
    shape: str

    def accepts(self, obj: object) -> bool:
        """``obj`` (anything with ``color`` and ``shape``) fits this description."""
        return obj.shape == self.shape and (self.color is None or obj.color == self.color)  # type: ignore[attr-defined]

    def phrase(self) -> str:
        return f"a {self.color} {self.shape}" if self.color else f"a {self.shape}"


@dataclass(frozen=True)
class Requirement:
    """What a prompt asks for: exactly these objects, optionally a relation, and a style.

    ``relation`` is ``None`` or one of 'left', 'right', 'above', 'below' and relates
    ``objects[0]`` to ``objects[1]``.  ``form`` is 'list' ("a ... and a ..."), 'count'
    ("three circles") or 'relation' ("a circle above a square").
    """

    objects: tuple[ObjectSpec, ...]
    relation: str | None
    style: str
    form: str

    def matches(self, objects: Sequence[object], style: str | None) -> bool:
        """True when ``objects`` (with color/shape/cx/cy) satisfy this requirement exactly.

        Exactly: the same number of objects, a one-to-one assignment of objects to descriptions
        (colours and shapes bound), the relation between the objects assigned to the first two
        descriptions, and the style (every object; ``style`` is the image's style, or ``None``
        when each object carries its own ``style`` attribute).
        """
        if len(objects) != len(self.objects):
            return False
        if style is None:
            if any(getattr(o, "style") != self.style for o in objects):
                return False
        elif style != self.style:
            return False
        for perm in itertools.permutations(range(len(objects))):
            if not all(s.accepts(objects[p]) for s, p in zip(self.objects, perm)):
                continue
            if self.relation is None or relation_holds(objects[perm[0]], objects[perm[1]], self.relation):
                return True
        return False


_COLOR_RE = "|".join(spec.COLORS)
_SHAPE_RE = "|".join(spec.SHAPES)
_OBJ_RE = re.compile(rf"^a (?:({_COLOR_RE}) )?({_SHAPE_RE})$")
_COUNT_RE = re.compile(rf"^(two|three|four) ({_SHAPE_RE})s$")
_REL_RE = re.compile(rf"^(a (?:(?:{_COLOR_RE}) )?(?:{_SHAPE_RE})) "
                     rf"({'|'.join(re.escape(r) for r in spec.RELATIONS)}) "
                     rf"(a (?:(?:{_COLOR_RE}) )?(?:{_SHAPE_RE}))$")


def _split_style(prompt: str) -> tuple[str, str]:
    if prompt.endswith(spec.OUTLINE_SUFFIX):
        return prompt[: -len(spec.OUTLINE_SUFFIX)], "outline"
    return prompt, "filled"


def _parse_object(text: str, prompt: str) -> ObjectSpec:
    m = _OBJ_RE.match(text)
    if not m:
        raise ValueError(f"cannot parse {text!r} in prompt {prompt!r}: expected 'a [colour] shape'")
    return ObjectSpec(m.group(1), m.group(2))


def parse_prompt(prompt: str) -> Requirement:
    """Parse any prompt of the grammar (and any caption) into a :class:`Requirement`.

    Raises ``ValueError`` for text outside the grammar.
    """
    body, style = _split_style(prompt)
    m = _COUNT_RE.match(body)
    if m:
        n = spec.WORD_COUNTS[m.group(1)]
        return Requirement(tuple(ObjectSpec(None, m.group(2)) for _ in range(n)), None, style, "count")
    m = _REL_RE.match(body)
    if m:
        a, b = _parse_object(m.group(1), prompt), _parse_object(m.group(3), prompt)
        return Requirement((a, b), spec.RELATIONS[m.group(2)], style, "relation")
    parts = body.split(" and ")
    if not 1 <= len(parts) <= spec.MAX_OBJECTS:
        raise ValueError(f"prompt {prompt!r} names {len(parts)} objects (at most {spec.MAX_OBJECTS})")
    return Requirement(tuple(_parse_object(p, prompt) for p in parts), None, style, "list")


def scene_satisfies(scene: Scene, prompt: str) -> bool:
    """The scene (ground truth, no pixels involved) satisfies the prompt exactly."""
    return parse_prompt(prompt).matches(scene.objects, scene.style)


def caption(scene: Scene) -> str:
    """Canonical caption: objects left to right as "a {color} {shape}" joined by " and "."""
    text = " and ".join(f"a {o.color} {o.shape}" for o in scene.left_to_right())
    return text + (spec.OUTLINE_SUFFIX if scene.style == "outline" else "")


# --- enumerating the prompts of each category ------------------------------------------------

def _with_styles(bodies: list[str]) -> list[str]:
    return bodies + [b + spec.OUTLINE_SUFFIX for b in bodies]


def _enumerate(category: str) -> list[str]:
    C, S = spec.COLORS, spec.SHAPES
    if category == "single_object":
        return _with_styles([f"a {c} {s}" for c in C for s in S] + [f"a {s}" for s in S])
    if category == "colors":
        return _with_styles([f"a {c} {s}" for c in C for s in S])
    if category == "counting":
        lo, hi = spec.COUNTING_RANGE
        return _with_styles([f"{spec.COUNT_WORDS[n]} {s}s" for n in range(lo, hi + 1) for s in S])
    if category == "two_object":
        return _with_styles([f"a {a} and a {b}" for a in S for b in S if a != b])
    if category == "position":
        return _with_styles([f"a {a} {r} a {b}" for a in S for r in spec.RELATIONS for b in S if a != b])
    if category == "color_attr":
        return _with_styles([f"a {c1} {a} and a {c2} {b}" for a in S for b in S if a != b
                             for c1 in C for c2 in C if c1 != c2])
    raise ValueError(f"unknown category {category!r}; expected one of {spec.CATEGORIES}")


ALL_PROMPTS: dict[str, tuple[str, ...]] = {c: tuple(_enumerate(c)) for c in spec.CATEGORIES}
"""Every distinct prompt string of each category (both styles)."""


def _hash_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_held_out(prompt: str) -> bool:
    """Whether a prompt string belongs to the held-out split (stable across runs and machines).

    Only prompts that relate two objects (position form) or name two or more objects all with
    their colours (color_attr form, and captions of two or more objects) can be held out:
    ``sha256("shapesworld-v1/prompt/" + prompt)`` read as an integer is divisible by 5.
    single_object, colors, counting and two_object prompts are never held out by string (see
    :func:`is_held_out_scene`).
    """
    req = parse_prompt(prompt)
    if req.relation is None and (len(req.objects) < 2 or any(o.color is None for o in req.objects)):
        return False
    return _hash_int(f"{spec.SPEC_VERSION}/prompt/{prompt}") % HOLDOUT_MODULUS == 0


def is_held_out_scene(scene: Scene) -> bool:
    """Whether a scene layout belongs to the held-out split (single_object, colors, counting).

    ``sha256("shapesworld-v1/scene/" + scene.canonical())`` divisible by 5.
    """
    return _hash_int(f"{spec.SPEC_VERSION}/scene/{scene.canonical()}") % HOLDOUT_MODULUS == 0


TRAIN_PROMPTS: dict[str, tuple[str, ...]] = {
    c: tuple(p for p in ps if not is_held_out(p)) for c, ps in ALL_PROMPTS.items()}
HELDOUT_PROMPTS: dict[str, tuple[str, ...]] = {
    c: tuple(p for p in ps if is_held_out(p)) for c, ps in ALL_PROMPTS.items()}
if not all(HELDOUT_PROMPTS[c] and TRAIN_PROMPTS[c] for c in PROMPT_SPLIT_CATEGORIES):  # pragma: no cover
    raise RuntimeError("the held-out hash left a prompt-split category without train or held-out prompts")


# --- sampling scenes for prompts -------------------------------------------------------------

def scene_for_prompt(prompt: str, rng: np.random.Generator, caption_order: bool = False, min_gap: int = spec.MIN_GAP) -> Scene:
    """A random valid scene that satisfies ``prompt`` exactly (free colours drawn at random).

    ``caption_order``: a prompt listing objects ("a circle and a square", "a red circle and a blue square") gets a
    scene whose objects stand left to right in the order the prompt names them, so the prompt is the scene's caption
    (spec "Understanding": captions list objects left to right). Any valid layout satisfies the prompt; this one
    also tells a model which named object goes where (a project option for training data, docs/shapesworld.md).
    ``min_gap``: background pixels between boxes (:func:`place_objects`; the spec's 2 by default).
    """
    req = parse_prompt(prompt)
    kinds = [(s.color if s.color is not None else spec.COLORS[int(rng.integers(len(spec.COLORS)))], s.shape)
             for s in req.objects]
    relation = (0, req.relation, 1) if req.relation else None
    scene = place_objects(rng, kinds, req.style, relation, min_gap=min_gap)
    if not caption_order or req.form != "list":
        return scene
    boxes = [o.box for o in scene.left_to_right()]  # boxes do not depend on the shape: any kind fits any box
    return Scene(tuple(SceneObject(color, shape, box) for (color, shape), box in zip(kinds, boxes)), scene.style)


def sample_prompt(category: str, rng: np.random.Generator, split: str = "train") -> str:
    """A uniformly drawn prompt string of a category from the 'train', 'heldout' or 'all' list."""
    table = {"train": TRAIN_PROMPTS, "heldout": HELDOUT_PROMPTS, "all": ALL_PROMPTS}[split]
    prompts = table[category]
    if not prompts:
        raise ValueError(f"category {category!r} has no {split} prompts")
    return prompts[int(rng.integers(len(prompts)))]


def with_colours(prompt: str, rng: np.random.Generator) -> str:
    """``prompt`` with a colour drawn for each object that has none ("a circle above a square" -> "a red circle above
    a green square"; the colours independent, so they may be equal). A project option for training data
    (``position_colours``), outside the spec's position template: the prompt still parses and still scores, and its
    uncoloured form is the string it was drawn from, so a coloured position prompt never shows a composition of shapes,
    relation and style that is held out (docs/shapesworld.md)."""
    req = parse_prompt(prompt)
    if req.form != "relation":
        raise ValueError(f"with_colours colours position prompts ('a circle above a square'); {prompt!r} is not one")
    first, second = (ObjectSpec(o.color or spec.COLORS[int(rng.integers(len(spec.COLORS)))], o.shape) for o in req.objects)
    return relation_prompt(first, req.relation, second, req.style)


def relation_prompt(first: ObjectSpec, relation: str, second: ObjectSpec, style: str) -> str:
    """The position prompt relating ``first`` to ``second`` by ``relation`` (a key of ``spec.RELATION_PHRASES``) in
    ``style``, e.g. "a red circle above a square, outline style": the form :func:`parse_prompt` reads back."""
    return f"{first.phrase()} {spec.RELATION_PHRASES[relation]} {second.phrase()}" + (spec.OUTLINE_SUFFIX if style == "outline" else "")


def sample_pair(category: str, rng: np.random.Generator, caption_order: bool = False, position_colours: float = 0.0,
                min_gap: int = spec.MIN_GAP) -> tuple[str, Scene]:
    """One training (prompt, scene) of a category; never a held-out prompt or held-out scene (``caption_order``: see
    :func:`scene_for_prompt`; ``position_colours``: that share of the position prompts get colours, :func:`with_colours`;
    0 draws nothing more, the spec's stream draw for draw)."""
    prompt = sample_prompt(category, rng, "train")
    if category == "position" and position_colours > 0 and rng.random() < position_colours:
        prompt = with_colours(prompt, rng)
    while True:
        scene = scene_for_prompt(prompt, rng, caption_order, min_gap)
        if category not in SCENE_SPLIT_CATEGORIES or not is_held_out_scene(scene):
            return prompt, scene


def train_pairs(rng: np.random.Generator, categories: Sequence[str] = spec.CATEGORIES, caption_order: bool = False,
                position_colours: float = 0.0, min_gap: int = spec.MIN_GAP) -> Iterator[tuple[str, str, Scene]]:
    """Endless (category, prompt, scene) training samples, categories uniformly at random.

    Never yields a held-out prompt string (position / color_attr) nor a held-out scene for
    single_object / two_object / counting / colors.
    """
    cats = list(categories)
    for c in cats:
        if c not in spec.CATEGORIES:
            raise ValueError(f"unknown category {c!r}")
    while True:
        cat = cats[int(rng.integers(len(cats)))]
        prompt, scene = sample_pair(cat, rng, caption_order, position_colours, min_gap)
        yield cat, prompt, scene


def _balanced_counts(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def heldout_prompts(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` held-out (category, prompt) items, balanced over the six categories, deterministic.

    position / color_attr draw from their held-out prompt strings; the other four draw from all
    their prompts (their held-out part is the scene, see :func:`heldout_pairs`).
    Within a category the distinct prompts are cycled in a seeded shuffled order, so a small
    ``n`` still covers as many distinct prompts as possible.
    """
    rng = np.random.default_rng([seed, HELDOUT_STREAM_TAG, 1])
    out: list[tuple[str, str]] = []
    for cat, k in zip(spec.CATEGORIES, _balanced_counts(n, len(spec.CATEGORIES))):
        pool = list(HELDOUT_PROMPTS[cat] if cat in PROMPT_SPLIT_CATEGORIES else ALL_PROMPTS[cat])
        order: list[str] = []
        while len(order) < k:
            order.extend(pool[i] for i in rng.permutation(len(pool)))
        out.extend((cat, p) for p in order[:k])
    return out


def heldout_pairs(n: int = 300, seed: int = 0) -> list[tuple[str, str, Scene]]:
    """:func:`heldout_prompts` with a ground-truth scene each, from the held-out seed stream.

    For single_object / two_object / counting / colors only held-out scenes
    (``is_held_out_scene``) are used.
    """
    rng = np.random.default_rng([seed, HELDOUT_STREAM_TAG, 2])
    out: list[tuple[str, str, Scene]] = []
    for cat, prompt in heldout_prompts(n, seed):
        while True:
            scene = scene_for_prompt(prompt, rng)
            if cat not in SCENE_SPLIT_CATEGORIES or is_held_out_scene(scene):
                break
        out.append((cat, prompt, scene))
    return out
