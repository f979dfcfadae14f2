"""Understanding tasks: captions and the three question kinds with their answers.

Spec section "Understanding": the caption is the canonical prompt listing the objects left to
right; questions "how many {shape}s are there", "what color is the {shape}" (unique shape) and
"is the {color} {shape} to the left of the {color} {shape}"; answers a number word, a colour,
yes/no.

Beyond the spec, a fourth kind teaches the frozen MLLM where things are, as Qwen2.5-VL's own pretraining does
with grounding: "where is the {color} {shape}" (an object named uniquely by colour and shape) is answered with
its half-open box "x0 y0 x1 y1" in pixels, each number a word of :data:`GROUNDING_WORDS`. Editing needs the DiT
to paint every untouched object back within 2 px (``EDIT_POSITION_TOLERANCE``), and everything it knows about
the input image passes through the MLLM (docs/demo-and-ablations.md section 1). ``sample_question`` draws it
only when asked for (``kind="where"``), so the spec's question stream is unchanged.

A second extension asks about the relation a position prompt states, given as text: "a circle above a square . is
the square below the circle" -> "yes" (:func:`sample_relation_text_question`; every relation word, where the spec's
questions only ask "to the left of"), so that the MLLM's states carry which way a relation points
(docs/demo-and-ablations.md section 3, ``train.diagnose``'s relation contrasts). Its "which" form asks for the
object on one side instead, "a circle above a square . what is below" -> "square" (:func:`relation_which_question`):
the answer is one of the prompt's two shape words, picked by whether the question's side is the prompt's relation,
where the yes/no form needs both the relation word and the order matched.

Project decisions (``docs/shapesworld.md``): questions carry no question mark (like prompts, no
trailing punctuation); count answers are "zero" .. "four" ("zero" included: the sampler asks
about an absent shape about one time in five; "one", not "a"); the left-of question is only
asked about two distinct objects each named uniquely by colour+shape, and the sampler only asks
it when the centres differ by >= 12 px horizontally, so "no" means "to the right of".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import spec
from .prompts import caption, is_held_out, parse_prompt, sample_pair, sample_prompt, with_colours
from .scene import Scene, random_scene, relation_holds

__all__ = ["Question", "answer_question", "parse_question", "sample_question", "question_pairs",
           "sample_caption", "sample_training_text", "sample_text_question", "sample_relation_text_question", "relation_text_question", "relation_which_question", "caption", "GROUNDING_WORDS",
           "parse_box"]

GROUNDING_TEMPLATE = "where is the {color} {shape}"
"""The grounding question (a project extension, module docstring); the answer is the box "x0 y0 x1 y1"."""
GROUNDING_WORDS: tuple[str, ...] = ("where", *(str(i) for i in range(spec.CANVAS + 1)))
"""Words the grounding questions add to the world's vocabulary: "where" and the pixel coordinates 0..64."""
RELATION_TEXT_TEMPLATE = "is the {shape} {phrase} the {shape2}"
"""The question about a position prompt given as text (a project extension, module docstring); answered yes or no."""
RELATION_WHICH_TEMPLATE = "what is {side}"
"""The "which" form of that question: the side is a relation phrase without its "of" ("to the left", "above");
answered with a shape word."""
RELATION_KINDS = ("yes_no", "which")
"""The two forms of the relation question (:func:`sample_relation_text_question`)."""


@dataclass(frozen=True)
class Question:
    """A parsed question: ``kind`` in 'count', 'color', 'left_of' and the objects it names."""

    kind: str
    shape: str
    color: str | None = None
    shape2: str | None = None
    color2: str | None = None

    def text(self) -> str:
        t = GROUNDING_TEMPLATE if self.kind == "where" else spec.QUESTION_TEMPLATES[self.kind]
        return t.format(shape=self.shape, color=self.color, shape2=self.shape2, color2=self.color2)


_C = spec.COLOR_PATTERN
_S = spec.SHAPE_PATTERN
_COUNT = re.compile(rf"^how many ({_S})s are there\??$")
_COLOR = re.compile(rf"^what colou?r is the ({_S})\??$")
_LEFT = re.compile(rf"^is the ({_C}) ({_S}) to the left of the ({_C}) ({_S})\??$")
_WHERE = re.compile(rf"^where is the ({_C}) ({_S})\??$")
_BOX = re.compile(r"^(\d+) (\d+) (\d+) (\d+)$")


def parse_question(question: str) -> Question:
    """Parse a question string; ``ValueError`` for text outside the grammar."""
    q = question.strip()
    m = _COUNT.match(q)
    if m:
        return Question("count", m.group(1))
    m = _COLOR.match(q)
    if m:
        return Question("color", m.group(1))
    m = _LEFT.match(q)
    if m:
        return Question("left_of", m.group(2), m.group(1), m.group(4), m.group(3))
    m = _WHERE.match(q)
    if m:
        return Question("where", m.group(2), m.group(1))
    raise ValueError(f"cannot parse question {question!r}")


def answer_question(scene: Scene, question: str) -> str:
    """The answer to a question about a scene.

    Raises ``ValueError`` when the question has no answer: "what color is the {shape}" where
    that shape is absent or not unique, a left-of question naming an absent or ambiguous object.
    """
    q = parse_question(question)
    objs = scene.objects
    if q.kind == "count":
        return spec.ANSWER_NUMBER_WORDS[sum(o.shape == q.shape for o in objs)]
    if q.kind == "color":
        hits = [o for o in objs if o.shape == q.shape]
        if len(hits) != 1:
            raise ValueError(f"question {question!r} has no answer: the image holds {len(hits)} "
                             f"{q.shape}s (it must hold exactly one)")
        return hits[0].color
    a = [o for o in objs if o.color == q.color and o.shape == q.shape]
    if q.kind == "where":
        if len(a) != 1:
            raise ValueError(f"question {question!r} has no answer: the image must hold exactly one {q.color} {q.shape}")
        return " ".join(str(v) for v in a[0].box)
    b = [o for o in objs if o.color == q.color2 and o.shape == q.shape2]
    if len(a) != 1 or len(b) != 1 or a[0] is b[0]:
        raise ValueError(f"question {question!r} has no answer: it must name two different objects, "
                         "each exactly once in the image")
    return "yes" if relation_holds(a[0], b[0], "left") else "no"


def _sample_one(scene: Scene, kind: str, rng: np.random.Generator) -> Question | None:
    objs = scene.objects
    if kind == "count":
        present = sorted({o.shape for o in objs})
        absent = [s for s in spec.SHAPES if s not in present]
        if absent and rng.random() < 0.2:
            return Question("count", absent[int(rng.integers(len(absent)))])
        return Question("count", present[int(rng.integers(len(present)))])
    if kind == "color":
        unique = [s for s in spec.SHAPES if sum(o.shape == s for o in objs) == 1]
        return Question("color", unique[int(rng.integers(len(unique)))]) if unique else None
    names = [o.name for o in objs]
    if kind == "where":
        unique = [o for o in objs if names.count(o.name) == 1]
        o = unique[int(rng.integers(len(unique)))] if unique else None
        return Question("where", o.shape, o.color) if o else None
    pairs = [(a, b) for a in objs for b in objs if a is not b
             and names.count(a.name) == 1 and names.count(b.name) == 1
             and abs(a.cx - b.cx) >= spec.RELATION_THRESHOLD]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    return Question("left_of", a.shape, a.color, b.shape, b.color)


def sample_question(rng: np.random.Generator, scene: Scene | None = None,
                    kind: str | None = None) -> tuple[Scene, str, str]:
    """A (scene, question, answer) triple; a random scene unless given, a random kind unless given.

    When the given scene admits no question of the given kind, a new random scene is drawn.
    """
    for _ in range(1000):
        k = kind if kind is not None else spec.QUESTION_KINDS[int(rng.integers(len(spec.QUESTION_KINDS)))]
        sc = scene if scene is not None else random_scene(rng, outline_prob=0.5)
        q = _sample_one(sc, k, rng)
        if q is None:
            scene = None
            continue
        return sc, q.text(), answer_question(sc, q.text())
    raise RuntimeError("could not sample a question")  # pragma: no cover


def parse_box(answer: str) -> tuple[int, int, int, int] | None:
    """The box of a grounding answer "x0 y0 x1 y1", or None when the text is not four numbers."""
    m = _BOX.match(answer.strip())
    return tuple(int(v) for v in m.groups()) if m else None  # type: ignore[return-value]


def question_pairs(rng: np.random.Generator) -> Iterator[tuple[Scene, str, str]]:
    """Endless (scene, question, answer) samples, question kinds uniformly at random."""
    while True:
        yield sample_question(rng)


def sample_caption(rng: np.random.Generator, exclude_held_out: bool = True) -> tuple[Scene, str]:
    """A random (scene, caption) pair for captioning.

    With ``exclude_held_out`` (the default, for training) scenes whose caption is a held-out
    prompt string are skipped, so caption training never shows a held-out prompt.
    """
    while True:
        scene = random_scene(rng, outline_prob=0.5)
        text = caption(scene)
        if not (exclude_held_out and is_held_out(text)):
            return scene, text


def sample_training_text(rng: np.random.Generator) -> tuple[Scene, str, bool]:
    """A (scene, text, is_caption) triple: half the time a training caption, else a training prompt of a random
    category with a scene drawn for it (never a held-out prompt or scene)."""
    if rng.random() < 0.5:
        scene, text = sample_caption(rng)
        return scene, text, True
    text, scene = sample_pair(spec.CATEGORIES[int(rng.integers(len(spec.CATEGORIES)))], rng)
    return scene, text, False


def sample_text_question(rng: np.random.Generator) -> tuple[str, str, str]:
    """A (text, question, answer) triple answered from the text alone, with no image.

    The text is a training caption or a training prompt of any category (never a held-out prompt or
    scene). The question is one the text settles: "how many {shape}s" always does (every template names
    every object's shape and number), "what color is the {shape}" only where the text names that
    object's colour, and the left-of question only about a caption (which lists objects left to right).
    Project decision (docs/shapesworld.md): the frozen MLLM learns to read prompts as a real MLLM's
    text pretraining would have taught it, so each word of a prompt reaches the query states (Eq. 4).
    """
    while True:
        scene, text, is_caption = sample_training_text(rng)
        q = _sample_one(scene, spec.QUESTION_KINDS[int(rng.integers(len(spec.QUESTION_KINDS)))], rng)
        if q is None or (q.kind == "left_of" and not is_caption):
            continue
        answer = answer_question(scene, q.text())
        if q.kind == "color" and not re.search(rf"\b{answer} {q.shape}\b", text):
            continue
        return text, q.text(), answer


def _shapes_and_relation(text: str, flip_word: bool) -> tuple[str, str, str]:
    """Position prompt ``text``'s first and second shape and its relation key, or the opposite relation (``flip_word``)."""
    req = parse_prompt(text)
    first, second = (o.shape for o in req.objects)
    return first, second, spec.OPPOSITE_RELATION[req.relation] if flip_word else req.relation


def relation_text_question(text: str, flip_word: bool, flip_order: bool) -> tuple[str, str]:
    """The (question, answer) about position prompt ``text`` with the opposite relation word (``flip_word``) and/or
    the shapes in the other order (``flip_order``): "a circle above a square" -> "is the circle above the square" and
    "is the square below the circle" -> "yes", "is the circle below the square" and "is the square above the circle"
    -> "no"."""
    first, second, relation = _shapes_and_relation(text, flip_word)
    if flip_order:
        first, second = second, first
    return RELATION_TEXT_TEMPLATE.format(shape=first, phrase=spec.RELATION_PHRASES[relation], shape2=second), "yes" if flip_word == flip_order else "no"


def relation_which_question(text: str, flip_word: bool) -> tuple[str, str]:
    """The (question, answer) asking which object of position prompt ``text`` stands on the side its relation names,
    or on the opposite side (``flip_word``): "a circle above a square" -> "what is above" -> "circle", "what is
    below" -> "square"."""
    first, second, relation = _shapes_and_relation(text, flip_word)
    side = spec.RELATION_PHRASES[relation].removesuffix(" of")
    return RELATION_WHICH_TEMPLATE.format(side=side), second if flip_word else first


def sample_relation_text_question(rng: np.random.Generator, position_colours: float = 0.0, kind: str = "yes_no") -> tuple[str, str, str]:
    """A (text, question, answer) triple: a training position prompt (never a held-out one; ``position_colours`` of
    them with a colour for each object, ``with_colours``; 0 draws nothing more) and a question about it. ``kind``
    "yes_no": the :func:`relation_text_question` with the relation word and the order each flipped at random, so
    "yes" and "no" are equally likely and only the relation word and the order tell them apart; "which": the
    :func:`relation_which_question` with the side flipped at random, so either shape word is as likely."""
    if kind not in RELATION_KINDS:
        raise ValueError(f"relation question kind {kind!r}: use one of {RELATION_KINDS}")
    text = sample_prompt("position", rng, "train")
    if position_colours and rng.random() < position_colours:
        text = with_colours(text, rng)
    if kind == "which":
        return (text, *relation_which_question(text, bool(rng.random() < 0.5)))
    return (text, *relation_text_question(text, bool(rng.random() < 0.5), bool(rng.random() < 0.5)))
