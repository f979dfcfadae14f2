"""What the nodes pass around and how a job reports progress, with no ComfyUI import.

The node logic (``jobs.py``) runs on a :class:`LoadedModel` and reports through a :data:`ProgressSink`;
inside ComfyUI, ``comfy_runtime.py`` supplies a residency built on ComfyUI's ModelPatcher (device
placement, offloading) and a sink built on ``comfy.utils.ProgressBar`` (progress, previews,
interruption). Outside ComfyUI (unit tests, scripts) the defaults here leave the model where it is and
report nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..hieraquery_core.pipeline import EncodedPrompt, HieraQueryPipeline, QueryStates


class Residency(Protocol):
    """Where a model lives between jobs and how it gets onto its compute device for one."""

    def active(self) -> AbstractContextManager[None]:
        """Context in which the model is on its compute device."""
        ...

    @property
    def output_device(self) -> torch.device:
        """Where IMAGE and LATENT outputs are put."""
        ...


class StaysPut:
    """The model stays on whatever device it is on; outputs go to the CPU."""

    def active(self) -> AbstractContextManager[None]:
        return nullcontext()

    @property
    def output_device(self) -> torch.device:
        return torch.device("cpu")


@dataclass
class LoadedModel:
    """The HIERAQUERY_MODEL socket value: a loaded checkpoint, its pipeline and its residency."""

    name: str
    path: Path
    pipeline: HieraQueryPipeline
    residency: Residency = field(default_factory=StaysPut)

    @contextmanager
    def active(self) -> Iterator[HieraQueryPipeline]:
        with self.residency.active():
            yield self.pipeline


@dataclass
class QueryStatesValue:
    """The HQ_QUERY_STATES socket value: Eq. 4's per-scale query states of every guidance branch.

    ``image_size`` is the (height, width) of the input images when editing (the default output size).
    """

    states: QueryStates
    source: str
    image_size: tuple[int, int] | None = None


@dataclass
class ConditionsValue:
    """The HQ_CONDITIONS socket value: Eq. 5's per-scale DiT conditions, with the empty-prompt branches."""

    encoded: EncodedPrompt
    source: str
    image_size: tuple[int, int] | None = None


@dataclass
class StepEvent:
    """One denoising step finished. ``value``/``total`` count steps over the whole node; ``scale``, ``step``
    and ``steps`` place it within the scale being painted. ``preview()`` decodes the current latents of the
    first image to pixels [1, 3, h, w]; ``cheap_preview`` says whether that costs nothing (pixel space)."""

    value: int
    total: int
    scale: int
    step: int
    steps: int
    preview: Callable[[], torch.Tensor]
    cheap_preview: bool


ProgressSink = Callable[[StepEvent], None]
"""Receives every StepEvent; raising from it stops the job (ComfyUI's interrupt)."""


def ignore_progress(event: StepEvent) -> None:
    """The sink used outside ComfyUI."""


class ProgressTracker:
    """Turns the pipeline's per-scale step callback into whole-node StepEvents.

    ``planned`` is the step count of every scale to be painted, in order; a refined scale may run fewer
    steps than planned (the pipeline reports its real count, and the total is corrected as it goes).
    """

    def __init__(self, pipeline: HieraQueryPipeline, planned: list[int], sink: ProgressSink) -> None:
        self.pipeline = pipeline
        self.planned = planned
        self.sink = sink
        self.cheap_preview = pipeline.model.codec.vae is None
        self.scale: int | None = None
        self.index = -1
        self.done = 0
        self.current_steps = 0

    def __call__(self, scale: int, step: int, steps: int, latents: torch.Tensor) -> None:
        if scale != self.scale:
            self.scale, self.index = scale, self.index + 1
            self.done += self.current_steps
        self.current_steps = steps
        total = self.done + steps + sum(self.planned[self.index + 1:])
        self.sink(StepEvent(self.done + step, total, scale, step, steps, lambda: self.pipeline.decode(latents[:1]), self.cheap_preview))
