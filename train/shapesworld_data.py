"""ShapesWorld as training data for the three stages, without files.

Every sample is a pure function of (seed, stage, index): sample ``i`` draws from its own generator
``numpy.random.default_rng([seed, TRAIN_STREAM, stage code, i])``, so a dataset index is a sample,
DataLoader workers need no shared state, and a resumed run sees exactly the samples it would have seen.
Images are rendered at ShapesWorld's 64x64 canvas (``render``); the trainer fits them to the model's
bucket (e.g. area-downscaled for a 32 px test model).

- ``t2i``: ``train_pairs`` -> {"prompt": prompt, "target": render(scene)} (held-out prompts and scenes
  never appear: ``train_pairs`` skips them).
- ``reconstruction``: the same pairs; the trainer makes the rendered scene both the MLLM's input image
  and the target (see :func:`train.data.stage_sample`).
- ``edit``: ``edit_triplets`` -> {"prompt": instruction, "images": [render(source)], "target": render(target)};
  ``edit_distractors`` > 0 gives that share of the recolours and removals a same-colour distractor
  (``--edit-distractors``; 0, the default, is the spec's distribution).
- ``caption_order`` (``--caption-order``): text-to-image and reconstruction scenes of prompts that list objects stand
  left to right in the order the prompt names them (``scene_for_prompt``); off, the default, places them anywhere.
- ``position_colours`` (``--position-colours SHARE``): that share of the text-to-image and reconstruction position
  prompts name a colour for each object ("a red circle above a blue square", ``with_colours``), so relations are seen
  in many more strings than the 35 training position strings; 0, the default, is the spec's stream.
- ``min_gap`` (``--min-gap PX``): text-to-image and reconstruction scenes keep at least that many background pixels
  between boxes (the spec's minimum, 2, is the default and gives the spec's stream). Squares fill their boxes, and 2 px
  at 64 px is half a pixel at the 16 px scale, where a third of four-square scenes merge; 4 px keeps them apart
  (docs/demo-and-ablations.md section 3, "Where the bundled model still fails"). Edit scenes keep the spec's gap.
- ``categories`` (``--category-weights``, :func:`weighted_categories`): the GenEval categories text-to-image and
  reconstruction prompts are drawn from, uniformly over the tuple, so a category listed three times is drawn three
  times as often (the spec's stream, each category once, is the default).

The streams are disjoint from the evaluation streams of ``hieraquery_core.shapesworld.heldout_pairs``
and ``train/evaluate.py`` (different entropy words).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hieraquery_core.errors import require
from hieraquery_core.shapesworld import edit_triplets, render, spec, train_pairs

TRAIN_STREAM = 0x54524E  # "TRN": the training samples' random stream
STAGE_CODES = {"t2i": 1, "reconstruction": 2, "edit": 3}
SIZE = spec.CANVAS


def to_pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def sample_rng(seed: int, stage: str, index: int) -> np.random.Generator:
    if stage not in STAGE_CODES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_CODES)}")
    return np.random.default_rng([seed, TRAIN_STREAM, STAGE_CODES[stage], index])


def make_sample(stage: str, rng: np.random.Generator, categories: Sequence[str] = spec.CATEGORIES, edit_kinds: Sequence[str] = spec.EDIT_KINDS,
                edit_distractors: float = 0.0, caption_order: bool = False, position_colours: float = 0.0,
                min_gap: int = spec.MIN_GAP) -> dict[str, Any]:
    """One sample dict for ``stage`` drawn from ``rng``."""
    if stage == "edit":
        triplet = next(edit_triplets(rng, edit_kinds, edit_distractors))
        return {"prompt": triplet.instruction, "target": to_pixels(render(triplet.target)), "images": [to_pixels(render(triplet.source))], "kind": triplet.kind}
    category, prompt, scene = next(train_pairs(rng, categories, caption_order, position_colours, min_gap))
    return {"prompt": prompt, "target": to_pixels(render(scene)), "images": [], "category": category}


class ShapesWorldDataset(torch.utils.data.Dataset):
    """``num_samples`` deterministic ShapesWorld samples of one stage (map-style, any index in any order)."""

    def __init__(self, stage: str, num_samples: int = 100_000, seed: int = 0, categories: Sequence[str] = spec.CATEGORIES, edit_kinds: Sequence[str] = spec.EDIT_KINDS,
                 edit_distractors: float = 0.0, caption_order: bool = False, position_colours: float = 0.0,
                 min_gap: int = spec.MIN_GAP) -> None:
        if stage not in STAGE_CODES:
            raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_CODES)}")
        self.stage = stage
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.categories = tuple(categories)
        self.edit_kinds = tuple(edit_kinds)
        self.edit_distractors = float(edit_distractors)
        self.caption_order = bool(caption_order)
        self.position_colours = float(position_colours)
        self.min_gap = int(min_gap)

    def __len__(self) -> int:
        return self.num_samples

    def size_of(self, index: int) -> tuple[int, int]:
        return (SIZE, SIZE)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        return make_sample(self.stage, sample_rng(self.seed, self.stage, index), self.categories, self.edit_kinds, self.edit_distractors, self.caption_order,
                           self.position_colours, self.min_gap)


def weighted_categories(weights: str) -> tuple[str, ...]:
    """The ``categories`` tuple of ``--category-weights``: "position=3,counting=2" lists position three times,
    counting twice and every other category once, so that uniform draws over it follow those whole-number weights (a
    project option for training data, as ``caption_order``; weight 0 leaves a category out). "" is the spec's
    ``CATEGORIES``, each once, and gives exactly the samples of a run without the option."""
    counts = dict.fromkeys(spec.CATEGORIES, 1)
    for item in filter(None, (part.strip() for part in weights.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        require(name in counts and value.strip().isdigit(), f"--category-weights {weights!r}: {item!r} is not CATEGORY=WHOLE_NUMBER with a "
                                                            f"category of {', '.join(spec.CATEGORIES)} (e.g. position=3)")
        counts[name] = int(value)
    require(any(counts.values()), f"--category-weights {weights!r} leaves no category to draw; give at least one a weight above 0")
    return tuple(c for c, k in counts.items() for _ in range(k))


def shapesworld_dataset(stage: str, num_samples: int = 100_000, seed: int = 0, **kwargs) -> ShapesWorldDataset:
    """The dataset behind ``--data shapesworld``."""
    return ShapesWorldDataset(stage, num_samples, seed, **kwargs)


def shapesworld_stream(stage: str, seed: int = 0, start: int = 0, **kwargs) -> Iterator[dict[str, Any]]:
    """The same samples as an endless generator (index ``start``, ``start + 1``, ...)."""
    index = start
    while True:
        yield make_sample(stage, sample_rng(seed, stage, index), **kwargs)
        index += 1
