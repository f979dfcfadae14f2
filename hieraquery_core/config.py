"""The configuration of a HieraQuery model, stored as ``config.json`` in every checkpoint.

It records what the paper leaves to the builder (section 3 and 4.2): the scales of the learnable
queries and the resolution each one paints at (Eq. 1-3, 5), the backbones (frozen MLLM, connector,
DiT, latent codec) and the multi-scale representation alignment (section 3.2).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HieraQueryError, require

MLLM_KINDS = ("qwen2_5_vl", "causal_lm")
DIT_KINDS = ("sd3", "sana")
CODEC_KINDS = ("pixel", "autoencoder_kl", "autoencoder_dc")
FORMAT_NAME = "hieraquery"
FORMAT_VERSION = 1


@dataclass
class ScaleSpec:
    """One scale s_k of Eq. 1: a grid of learnable queries and the image resolution it paints.

    ``grid`` is (rows, cols) of the query set Q_{s_k} (N_{s_k} = rows * cols) and of its 2-D
    positional grid encoding P_{s_k} (Eq. 3). ``resolution`` is the fraction of the target image
    side that the DiT paints for this scale (the paper's 0.25x, 0.5x, 1.0x).
    """

    grid: tuple[int, int]
    resolution: float

    def __post_init__(self) -> None:
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        require(self.grid[0] > 0 and self.grid[1] > 0, f"scale grid {self.grid} must be positive")
        require(0.0 < self.resolution <= 1.0, f"scale resolution {self.resolution} must be in (0, 1]")

    @property
    def num_queries(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def name(self) -> str:
        return f"{self.grid[0]}x{self.grid[1]}"


def default_scales() -> list[ScaleSpec]:
    """The paper's best setting (Table 4): 4x4, 8x8, 16x16 queries (336) at 0.25x, 0.5x, 1.0x."""
    return [ScaleSpec((4, 4), 0.25), ScaleSpec((8, 8), 0.5), ScaleSpec((16, 16), 1.0)]


@dataclass
class BackboneSpec:
    """A backbone built by a well-kept library: ``kind`` names the class family.

    Exactly one of ``path`` (a local Hugging Face-format folder, loaded with ``from_pretrained``;
    relative paths are resolved against the checkpoint directory) or ``config`` (keyword arguments of
    the library's config class, for randomly initialised models) is used; ``path`` wins.
    ``options`` holds extra settings of the adapter (e.g. the image processor's pixel budget).
    """

    kind: str
    path: str | None = None
    config: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConnectorSpec:
    """The trainable connector g_theta (Eq. 4-5): a bidirectional Qwen2 transformer.

    The paper uses a Qwen2.5-0.5B-sized connector (24 layers, width 896); ``path`` may point at a
    local Qwen2 folder to initialise from, otherwise it is built from these sizes.
    """

    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    intermediate_size: int = 4864
    path: str | None = None


@dataclass
class AlignmentSpec:
    """Multi-scale representation alignment (section 3.2), REPA-style.

    ``weight`` 0 switches it off (the paper's "no alignment" ablation). ``block`` is the DiT block
    whose output is aligned (negative index counts from the end; default: the middle block).
    """

    weight: float = 0.0
    block: int | None = None
    projector_dim: int = 256


@dataclass
class HieraQueryConfig:
    """Everything needed to rebuild a HieraQuery model; serialised as the checkpoint's config.json."""

    mllm: BackboneSpec
    dit: BackboneSpec
    codec: BackboneSpec = field(default_factory=lambda: BackboneSpec("pixel"))
    connector: ConnectorSpec = field(default_factory=ConnectorSpec)
    scales: list[ScaleSpec] = field(default_factory=default_scales)
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)
    image_size: int = 1024
    prompt_dropout: float = 0.1
    image_dropout: float = 0.1
    dropped_prompt_keeps_image: bool = False
    """Project extension (off: MetaQuery's and InstructPix2Pix's recipe): a sample whose prompt is dropped but
    whose input image is kept trains towards that input image instead of its target, so the image-only
    guidance branch of editing learns stage 2's reconstruction (section 4.2) rather than an average edit;
    ``HieraQuery.drop_conditions``, docs/design.md "What an empty instruction means"."""
    prompt_tokens: int = 0
    """Project extension (0, off: the DiT reads the query states alone, as in the paper): the MLLM's last hidden states
    at the last ``prompt_tokens`` positions of the prompt (instruction and image tokens included; zeros where a
    shorter prompt leaves room) go before each scale's query states into the connector, so the DiT also reads one
    token per word, as text-to-image models read a text encoder's states (``FrozenMLLM.forward``, docs/design.md
    "The prompt's own tokens beside the queries")."""
    coarse_input_noise: float | None = None
    """Project extension (None, off: each scale paints from its queries alone, as in the paper): the DiT also reads
    the previous scale's image, its training copies noised up to this level (``HieraQuery.read_coarse``,
    docs/design.md "Finer scales that read the coarser image")."""
    plan: dict[str, list[str]] = field(default_factory=dict)
    """Project extension ({}, off: the prompt is encoded as given, as in the paper): questions the frozen MLLM answers
    about a text-to-image prompt before it is encoded, each keyed to the words that ask it; the questions and answers
    join the prompt (:mod:`hieraquery_core.plan`, docs/design.md "Reason, then paint")."""
    timestep_sampling: str = "logit_normal"
    timestep_logit_mean: float = 0.0
    timestep_logit_std: float = 1.0
    scheduler_shift: float = 1.0
    name: str = "hieraquery"

    def __post_init__(self) -> None:
        self.scales = [s if isinstance(s, ScaleSpec) else ScaleSpec(tuple(s["grid"]), s["resolution"]) for s in self.scales]
        for key, kinds in (("mllm", MLLM_KINDS), ("dit", DIT_KINDS), ("codec", CODEC_KINDS)):
            spec = getattr(self, key)
            if isinstance(spec, dict):
                spec = BackboneSpec(**spec)
                setattr(self, key, spec)
            require(spec.kind in kinds, f"config.{key}.kind is {spec.kind!r}; choose one of {', '.join(kinds)}")
        if isinstance(self.connector, dict):
            self.connector = ConnectorSpec(**self.connector)
        if isinstance(self.alignment, dict):
            self.alignment = AlignmentSpec(**self.alignment)
        require(len(self.scales) > 0, "config.scales is empty; give at least one scale, e.g. [{'grid': [16, 16], 'resolution': 1.0}]")
        resolutions = [s.resolution for s in self.scales]
        require(resolutions == sorted(resolutions), f"scales must go coarse to fine; got resolutions {resolutions}")
        require(self.timestep_sampling in ("uniform", "logit_normal"), "timestep_sampling must be 'uniform' or 'logit_normal'")
        require(self.prompt_tokens >= 0, f"prompt_tokens is {self.prompt_tokens}; give 0 (query states only) or a positive number of prompt positions")
        require(self.coarse_input_noise is None or 0.0 <= self.coarse_input_noise < 1.0,
                f"coarse_input_noise is {self.coarse_input_noise}; it must be in [0, 1) (or null: the DiT does not read the previous scale)")
        require(isinstance(self.plan, dict) and all(isinstance(q, str) and q.strip() and isinstance(w, (list, tuple)) and w and all(isinstance(t, str) and t.strip() for t in w)
                                                    for q, w in self.plan.items()),
                f"plan is {self.plan!r}; give a mapping from each question to the words that ask it, e.g. {{'what is to the left': ['left', 'right']}}")
        self.plan = {q: list(w) for q, w in self.plan.items()}
        require(self.timestep_logit_std > 0, f"timestep_logit_std is {self.timestep_logit_std}; it must be positive (SD3 uses 1.0)")

    @property
    def num_queries(self) -> int:
        return sum(s.num_queries for s in self.scales)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["scales"] = [{"grid": list(s.grid), "resolution": s.resolution} for s in self.scales]
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HieraQueryConfig":
        data = dict(data)
        fmt = data.pop("format", None)
        version = data.pop("format_version", None)
        require(fmt == FORMAT_NAME, f"this config.json is not a HieraQuery checkpoint config (format={fmt!r}); point at a folder saved by hieraquery_core")
        require(version == FORMAT_VERSION, f"checkpoint format version {version} is not supported (expected {FORMAT_VERSION}); update the hieraquery package")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, f"config.json has unknown keys {unknown}; it was written by a different version")
        try:
            return cls(**data)
        except TypeError as exc:
            raise HieraQueryError(f"config.json is malformed: {exc}") from exc

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "HieraQueryConfig":
        path = Path(path)
        require(path.is_file(), f"{path} does not exist; a HieraQuery checkpoint is a folder with config.json inside")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HieraQueryError(f"{path} is not valid JSON ({exc}); restore it from the original checkpoint") from exc
        return cls.from_dict(data)
