"""Every constant of the ShapesWorld v1 specification.

Source: ``/work/shared/notes/shapesworld-v1.md`` ("ShapesWorld v1 — the project's miniature world").
Each block names the section of that page it transcribes.  Nothing here is tunable: generators,
renderers and evaluators written to the page must agree on these numbers.
"""

from __future__ import annotations

from typing import Final

SPEC_VERSION: Final[str] = "shapesworld-v1"

# --- "Canvas and rendering" -------------------------------------------------------------------
CANVAS: Final[int] = 64
"""Final images are CANVAS x CANVAS RGB uint8."""
BACKGROUND: Final[tuple[int, int, int]] = (255, 255, 255)
"""Pure white background."""
SCALES: Final[tuple[int, ...]] = (16, 32, 64)
"""Scales of one scene: the 64x64 image area-downsampled (box filter) to 32 and 16."""

PALETTE: Final[dict[str, tuple[int, int, int]]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
"""Exact RGB of a filled shape's interior."""
COLORS: Final[tuple[str, ...]] = tuple(PALETTE)

SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle")
"""circle, axis-aligned square, isosceles triangle (apex up, base horizontal)."""
MIN_SIDE: Final[int] = 14
MAX_SIDE: Final[int] = 22
"""Bounding-box side, inclusive range (a triangle's box is base x height)."""

MIN_OBJECTS: Final[int] = 1
MAX_OBJECTS: Final[int] = 4
MIN_GAP: Final[int] = 2
"""At least this many background pixels between any two boxes."""
MIN_MARGIN: Final[int] = 1
"""Every box fully inside the canvas with at least this many pixels of margin."""

STYLES: Final[tuple[str, ...]] = ("filled", "outline")
DEFAULT_STYLE: Final[str] = "filled"
OUTLINE_STROKE: Final[int] = 3
"""Outline style: a 3 px stroke of the object's colour along its boundary, white inside."""

# --- "Relations" ------------------------------------------------------------------------------
RELATION_THRESHOLD: Final[int] = 12
"""left/right: box centres differ by >= 12 px horizontally; above/below: vertically."""
RELATIONS: Final[dict[str, str]] = {
    "to the left of": "left",
    "to the right of": "right",
    "above": "above",
    "below": "below",
}
"""Prompt phrase -> relation key."""
RELATION_PHRASES: Final[dict[str, str]] = {v: k for k, v in RELATIONS.items()}
OPPOSITE_RELATION: Final[dict[str, str]] = {"left": "right", "right": "left", "above": "below", "below": "above"}
"""Relation key -> the relation that holds when the two objects trade places."""

# --- "Prompts" --------------------------------------------------------------------------------
COUNT_WORDS: Final[dict[int, str]] = {1: "a", 2: "two", 3: "three", 4: "four"}
"""Counts are written as words in prompts."""
WORD_COUNTS: Final[dict[str, int]] = {v: k for k, v in COUNT_WORDS.items()}
PLURAL_SUFFIX: Final[str] = "s"
OUTLINE_SUFFIX: Final[str] = ", outline style"
"""Optional prompt suffix selecting the outline style; without it the style is filled."""

CATEGORIES: Final[tuple[str, ...]] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
"""GenEval categories, in the spec's order."""

TEMPLATES: Final[dict[str, str]] = {
    "single_object": "a {color} {shape}",
    "single_object_colorless": "a {shape}",
    "two_object": "a {shape} and a {shape}",
    "counting": "{count} {shape}s",
    "colors": "a {color} {shape}",
    "position": "a {shape} {relation} a {shape}",
    "color_attr": "a {color} {shape} and a {color} {shape}",
}
"""Prompt templates (lower case, no trailing period)."""
COUNTING_RANGE: Final[tuple[int, int]] = (2, 4)
"""counting prompts use counts 2..4 inclusive."""

# --- "Edit instructions" ----------------------------------------------------------------------
EDIT_KINDS: Final[tuple[str, ...]] = ("recolor", "remove", "add", "restyle")
EDIT_TEMPLATES: Final[dict[str, str]] = {
    "recolor": "make the {color} {shape} {new_color}",
    "remove": "remove the {color} {shape}",
    "add": "add a {color} {shape}",
    "restyle_outline": "make it outline style",
    "restyle_filled": "make it filled",
}

# --- "Understanding" --------------------------------------------------------------------------
QUESTION_KINDS: Final[tuple[str, ...]] = ("count", "color", "left_of")
QUESTION_TEMPLATES: Final[dict[str, str]] = {
    "count": "how many {shape}s are there",
    "color": "what color is the {shape}",
    "left_of": "is the {color} {shape} to the left of the {color2} {shape2}",
}
ANSWER_NUMBER_WORDS: Final[dict[int, str]] = {
    0: "zero",
    1: "one",
    2: "two",
    3: "three",
    4: "four",
}
"""Answers to "how many" questions (project decision: "zero" is included, "one" not "a")."""

# --- "Scoring (GenEval style)" ----------------------------------------------------------------
FILL_RATIO: Final[dict[str, float]] = {"circle": 0.785, "square": 1.0, "triangle": 0.5}
"""Nominal fill ratio of a shape's box (area / box area)."""


# Regular-expression alternations of the vocabulary, shared by the instruction and question parsers.
COLOR_PATTERN = "|".join(COLORS)
SHAPE_PATTERN = "|".join(SHAPES)
