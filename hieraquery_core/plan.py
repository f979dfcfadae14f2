"""Reason, then paint (project extension, off by default): the frozen MLLM answers questions about a text-to-image
prompt, and the questions with their answers join the prompt that Eq. 4 encodes with the queries.

In the paper the frozen MLLM reads the prompt and the queries (section 3.1, Eq. 4) and its understanding reaches the
DiT only through the query states. In ShapesWorld the frozen MLLM answers "what is to the left" about position
prompts it never saw, while a DiT conditioned on those prompts places their objects about as often the wrong way round
as the right one (docs/design.md, "Reason, then paint"). Asking first puts the MLLM's answer into the prompt as a word,
which the queries carry as they carry any shape word.

``HieraQueryConfig.plan`` maps each question to the words that ask it. A prompt containing one of those words (as a
whole word) is asked that question, as ``"{prompt} . {question}"`` with no image; every question asked, with its
answer, is appended in the config's order:

    "a circle to the right of a triangle"
    -> "a circle to the right of a triangle . what is to the left triangle"

:meth:`HieraQuery.encode` plans every prompt that has no input image, in training as in sampling, so the DiT learns
from the MLLM's own answers. Edit instructions (prompts with images) and the empty prompt of guidance are never planned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .errors import require
from .mllm import FrozenMLLM

JOINER = " . "
"""Between the prompt and a question, as the ShapesWorld MLLM was taught text questions (``train.shapesworld_mllm``)."""
ANSWER_TOKENS = 8
"""The most tokens of an answer (a ShapesWorld answer is one word)."""


def triggered_questions(prompt: str, plan: Mapping[str, Sequence[str]]) -> list[str]:
    """The plan's questions that ``prompt`` asks: those with one of their words in it (whole words, any case)."""
    words = set(re.findall(r"[a-z0-9]+", prompt.lower()))
    return [question for question, triggers in plan.items() if words.intersection(t.lower() for t in triggers)]


def planned_prompts(mllm: FrozenMLLM, prompts: Sequence[str], plan: Mapping[str, Sequence[str]], asks: Sequence[bool] | None = None) -> list[str]:
    """Every prompt (only those whose ``asks`` is true, if given) with its triggered questions and the MLLM's greedy
    answers appended; a question answered with nothing is left out, and one the prompt already holds with an answer is
    not asked again (planning a planned prompt changes nothing). One batched ``describe`` for the whole batch."""
    asked = [(i, q) for i, p in enumerate(prompts) if asks is None or asks[i] for q in triggered_questions(p, plan) if f"{JOINER}{q} " not in p]
    out = list(prompts)
    if not asked:
        return out
    answers = mllm.describe(None, [f"{prompts[i]}{JOINER}{q}" for i, q in asked], max_new_tokens=ANSWER_TOKENS)
    for (i, question), answer in zip(asked, answers):
        if answer:
            out[i] = f"{out[i]}{JOINER}{question} {answer}"
    return out


def plan_answers(planned: str, prompt: str, plan: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The questions :func:`planned_prompts` asked about ``prompt`` and the answers it appended, read back from the
    ``planned`` prompt (question -> answer; empty when nothing was asked)."""
    require(planned.startswith(prompt), f"{planned!r} is not a planned form of {prompt!r}; give the prompt it was planned from")
    answers = {}
    for part in planned[len(prompt):].split(JOINER)[1:]:
        question = next((q for q in plan if part.startswith(f"{q} ")), None)
        require(question is not None, f"{part!r} in {planned!r} answers none of the plan's questions ({', '.join(plan)})")
        answers[question] = part[len(question) + 1 :]
    return answers


def parse_plan(text: str) -> dict[str, list[str]]:
    """The command line's form of a plan, ``"QUESTION=WORD,WORD;QUESTION=WORD"``, as ``HieraQueryConfig.plan``
    ("" is no plan)."""
    plan: dict[str, list[str]] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        question, sep, words = entry.partition("=")
        triggers = [w.strip() for w in words.split(",") if w.strip()]
        require(bool(sep and question.strip() and triggers), f"plan entry {entry!r} is not QUESTION=WORD[,WORD...]; e.g. 'what is to the left=left,right'")
        plan[question.strip()] = triggers
    return plan
