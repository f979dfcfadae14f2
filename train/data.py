"""Training data for the three stages: samples, stages, files, filters, aspect-ratio buckets, batching.

A **sample** is a dict ``{"prompt": str, "target": float[3, H, W] in [0, 1], "images": [float[3, h, w], ...]}``
(``images`` optional). Anything that yields such dicts can be trained on: a ``torch.utils.data.Dataset``
(map-style, exact resume by index), any iterable or ``IterableDataset`` (resume replays the stream), the
file datasets below, or the ShapesWorld generators of :mod:`train.shapesworld_data`.

**Stages** (paper section 4.2) turn a sample into what the model is trained on (:func:`stage_sample`):

- ``t2i``: prompt -> target; input images are ignored.
- ``reconstruction``: the image itself is the MLLM's input and the target. The prompt is
  ``recon_prompt``, by default the empty string: the editing stage's image-only guidance branch is
  exactly "empty prompt + source image", which should reproduce the source, and that is what this
  stage teaches (pairs' captions are not used). A fixed instruction can be given instead.
- ``edit``: prompt = the instruction, images = [source], target = the edited image.

A later stage can replay text-to-image samples (:class:`ReplayMix`, ``--replay-share``) so that it
does not forget text-to-image; the paper's recipe is no replay.

**Files** (:func:`load_records`): a folder (``NAME.png`` + ``NAME.txt`` caption; for editing also
``NAME.source.png``, the ``.txt`` being the instruction) or a JSONL manifest (one object per line;
``image`` + ``prompt`` for pairs, ``image`` + ``instruction`` + ``source`` for edits; optional
``clip_score``, ``watermark_score``, ``width``, ``height``; relative paths are relative to the
manifest's folder). The paper's filters (section 4.1) are applied at indexing: aspect ratio <= 2.5,
clip_score >= 0.45, watermark_score <= 0.5 (scores only where the manifest has them).

**Buckets** (native aspect ratio, section 5's "ratio buckets"): sizes (h, w) of about
``image_size**2`` pixels whose every scale is a valid size for the model (:func:`make_buckets`);
each image goes to the bucket nearest its aspect ratio and is resized to cover it and centre-cropped.
:class:`BucketBatchSampler` only batches images of one bucket.

A bad or unreadable sample never stops training: it is dropped from its batch and counted
(:class:`SkipCounter`), and the counts go to the log.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hieraquery_core.errors import HieraQueryError, require
from hieraquery_core.images import as_pixels, resize

STAGES = ("t2i", "reconstruction", "edit")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SOURCE_TAG = ".source"
"""In a folder of edits, ``NAME.source.png`` is the source image of ``NAME.png``."""

MAX_ASPECT_RATIO = 2.5
MIN_CLIP_SCORE = 0.45
MAX_WATERMARK_SCORE = 0.5
REPLAY_STREAM = 0x52504C  # "RPL": which samples of a later stage are text-to-image replay (ReplayMix)

PAIR_COLUMNS = {"image": ("image", "target"), "prompt": ("prompt", "caption", "text")}
EDIT_COLUMNS = {"image": ("image", "target"), "prompt": ("instruction", "prompt"), "source": ("source", "source_image")}
"""Manifest columns: the canonical name first, then accepted aliases."""


# --- samples and stages -------------------------------------------------------------------------

def check_sample(sample: Any) -> dict[str, Any]:
    """Validate one sample dict; raises ``ValueError`` naming what is wrong."""
    if not isinstance(sample, dict):
        raise ValueError(f"a sample must be a dict with 'prompt' and 'target', got {type(sample).__name__}")
    missing = [k for k in ("prompt", "target") if k not in sample]
    if missing:
        raise ValueError(f"sample lacks {missing} (has {sorted(sample)})")
    if not isinstance(sample["prompt"], str):
        raise ValueError(f"sample prompt must be a str, got {type(sample['prompt']).__name__}")
    # Tensors may be [3, H, W] or [H, W, 3] (the layout is guessed); numpy arrays and PIL images are accepted too.
    target = as_pixels(sample["target"])[0]
    images = [as_pixels(i)[0] for i in (sample.get("images") or [])]
    return {"prompt": sample["prompt"], "target": target, "images": images}


def stage_sample(sample: dict[str, Any], stage: str, recon_prompt: str = "") -> dict[str, Any]:
    """What the model trains on at ``stage`` for one (checked) sample; ``ValueError`` if it cannot."""
    if stage == "t2i":
        return {"prompt": sample["prompt"], "target": sample["target"], "images": []}
    if stage == "reconstruction":
        return {"prompt": recon_prompt, "target": sample["target"], "images": [sample["target"]]}
    if stage == "edit":
        if not sample["images"]:
            raise ValueError("an edit sample needs a source image ('images': [source])")
        return {"prompt": sample["prompt"], "target": sample["target"], "images": list(sample["images"][:1])}
    raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")


# --- aspect-ratio buckets -----------------------------------------------------------------------

def bucket_step(size_multiple: int, resolutions: Sequence[float]) -> int:
    """The smallest side step s such that s * r is a whole multiple of ``size_multiple`` for every scale r."""
    for k in range(1, 1025):
        s = size_multiple * k
        if all(abs(s * r - round(s * r)) < 1e-9 and round(s * r) % size_multiple == 0 for r in resolutions):
            return s
    raise HieraQueryError(f"no image side fits scale resolutions {list(resolutions)} with multiple {size_multiple}")


def make_buckets(image_size: int, step: int, max_ratio: float = MAX_ASPECT_RATIO, valid: Callable[[int, int], bool] | None = None) -> list[tuple[int, int]]:
    """Bucket sizes (h, w): multiples of ``step``, at most ``image_size**2`` pixels, aspect ratio <= ``max_ratio``.

    For every width the tallest fitting height is taken (SDXL-style), so every bucket has about the
    same pixel count; ``valid(h, w)`` (e.g. the model's ``scale_sizes`` check) drops sizes the model
    cannot paint. The square ``image_size`` bucket is always included when valid.
    """
    require(image_size % step == 0, f"image_size {image_size} is not a multiple of {step}, which every scale needs; choose a multiple of {step}")
    area = image_size * image_size
    sizes = {(image_size, image_size)}
    w = step
    while w <= area // step:
        h = (area // w) // step * step
        if h >= step and max(h / w, w / h) <= max_ratio + 1e-9:
            sizes.add((h, w))
        w += step
    out = sorted(s for s in sizes if valid is None or valid(*s))
    require(bool(out), f"no bucket size fits the model at image_size {image_size}")
    return out


def model_buckets(model, image_size: int | None = None, max_ratio: float = MAX_ASPECT_RATIO, square_only: bool = False) -> list[tuple[int, int]]:
    """Buckets for a :class:`~hieraquery_core.model.HieraQuery` (its ``scale_sizes`` multiple and limits)."""
    size = image_size or model.config.image_size
    step = bucket_step(model.size_multiple(), [s.resolution for s in model.config.scales])

    def valid(h: int, w: int) -> bool:
        try:
            model.scale_sizes(h, w)
            return True
        except HieraQueryError:
            return False

    if square_only:
        require(valid(size, size), f"image size {size} does not fit the model's scales: {size} must be a multiple of {step}")
        return [(size, size)]
    return make_buckets(size, step, max_ratio, valid)


def nearest_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log) to height x width."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - ratio), -b[0] * b[1]))


def fit_to_bucket(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [3, H, W] (or [B, 3, H, W]) to cover ``size`` keeping its aspect ratio, then centre-crop."""
    squeeze = pixels.dim() == 3
    x = pixels[None] if squeeze else pixels
    h, w = x.shape[-2:]
    if (h, w) != tuple(size):
        scale = max(size[0] / h, size[1] / w)
        nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
        x = resize(x, (nh, nw))
        top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
        x = x[..., top : top + size[0], left : left + size[1]]
    x = x.contiguous()
    return x[0] if squeeze else x


# --- records from files ------------------------------------------------------------------------

@dataclass
class Record:
    """One sample on disk: target image, prompt or instruction, optional source image, image size."""

    image: str
    prompt: str
    source: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class SkipCounter:
    """Counts of samples left out, by reason (indexing and loading)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def update(self, other: Counter | dict[str, int]) -> None:
        self.counts.update(other)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "none"


def _pick_column(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def _expected_columns(stage: str) -> str:
    spec = EDIT_COLUMNS if stage == "edit" else PAIR_COLUMNS
    parts = [f"{names[0]!r}" + (f" (or {', '.join(repr(a) for a in names[1:])})" if len(names) > 1 else "") for names in spec.values()]
    return ", ".join(parts)


def read_manifest(path: Path, stage: str, skips: SkipCounter, min_clip: float = MIN_CLIP_SCORE, max_watermark: float = MAX_WATERMARK_SCORE) -> list[Record]:
    """Records of a JSONL manifest. Wrong columns -> one :class:`HieraQueryError` naming the expected ones."""
    spec = EDIT_COLUMNS if stage == "edit" else PAIR_COLUMNS
    base = path.parent
    records: list[Record] = []
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    require(bool(lines), f"manifest {path} is empty")
    header_checked = False
    for lineno, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skips.add("manifest line is not JSON")
            continue
        if not isinstance(row, dict):
            skips.add("manifest line is not a JSON object")
            continue
        if not header_checked:
            absent = [names[0] for names in spec.values() if not any(n in row for n in names)]
            if absent:
                raise HieraQueryError(
                    f"manifest {path} line {lineno} has columns {sorted(row)}; {'an edit' if stage == 'edit' else 'a ' + stage} manifest needs {_expected_columns(stage)} "
                    f"(missing {absent}); optional: 'clip_score', 'watermark_score', 'width', 'height'"
                )
            header_checked = True
        image, prompt = _pick_column(row, spec["image"]), _pick_column(row, spec["prompt"])
        source = _pick_column(row, spec["source"]) if stage == "edit" else None
        if image is None or prompt is None or (stage == "edit" and source is None):
            skips.add("manifest row lacks a value")
            continue
        try:
            clip = row.get("clip_score")
            if clip is not None and float(clip) < min_clip:
                skips.add(f"clip_score < {min_clip}")
                continue
            mark = row.get("watermark_score")
            if mark is not None and float(mark) > max_watermark:
                skips.add(f"watermark_score > {max_watermark}")
                continue
            width = int(row["width"]) if row.get("width") else None
            height = int(row["height"]) if row.get("height") else None
        except (TypeError, ValueError):
            skips.add("manifest row has a non-numeric score or size")
            continue
        records.append(Record(str(base / image), str(prompt), str(base / source) if source else None, width, height))
    return records


def read_folder(folder: Path, stage: str, skips: SkipCounter) -> list[Record]:
    """Records of a folder: ``NAME.png`` + ``NAME.txt`` (+ ``NAME.source.png`` for edits)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    by_stem = {p.stem: p for p in files}
    records = []
    for path in files:
        if path.stem.endswith(SOURCE_TAG):
            continue
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            skips.add("image without a .txt caption")
            continue
        try:
            prompt = caption.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            skips.add("unreadable caption")
            continue
        source = None
        if stage == "edit":
            source_path = by_stem.get(path.stem + SOURCE_TAG)
            if source_path is None:
                skips.add("edit image without a NAME.source image")
                continue
            source = str(source_path)
        records.append(Record(str(path), prompt, source))
    return records


def image_size_of(path: str) -> tuple[int, int]:
    """(width, height) from the file header (no decoding)."""
    with Image.open(path) as img:
        return img.size


def load_records(
    source: str | os.PathLike,
    stage: str,
    skips: SkipCounter | None = None,
    max_ratio: float = MAX_ASPECT_RATIO,
    min_clip: float = MIN_CLIP_SCORE,
    max_watermark: float = MAX_WATERMARK_SCORE,
) -> list[Record]:
    """Records of a folder or a ``.jsonl`` manifest, filtered as in section 4.1 (sizes read from headers)."""
    skips = skips if skips is not None else SkipCounter()
    path = Path(source)
    require(path.exists(), f"training data {path} does not exist; give a folder of images with .txt captions, a .jsonl manifest, or 'shapesworld'")
    if path.is_dir():
        records = read_folder(path, stage, skips)
    else:
        require(path.suffix.lower() in (".jsonl", ".json"), f"{path} is neither a folder nor a .jsonl manifest")
        records = read_manifest(path, stage, skips, min_clip, max_watermark)
    kept = []
    for rec in records:
        if rec.width is None or rec.height is None:
            try:
                rec.width, rec.height = image_size_of(rec.image)
            except (OSError, UnidentifiedImageError, ValueError):
                skips.add("unreadable image")
                continue
        if rec.width <= 0 or rec.height <= 0 or max(rec.width / rec.height, rec.height / rec.width) > max_ratio:
            skips.add(f"aspect ratio > {max_ratio}")
            continue
        kept.append(rec)
    require(bool(kept), f"no usable samples in {path} ({len(records)} found; left out: {skips.summary()})")
    return kept


def read_image(path: str) -> torch.Tensor:
    """An image file as float [3, H, W] in [0, 1] (RGB; alpha composited on white)."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0


# --- datasets ------------------------------------------------------------------------------------

class Skipped:
    """Returned instead of a sample that could not be loaded; carries the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Skipped({self.reason!r})"


class FileDataset(torch.utils.data.Dataset):
    """Map-style dataset of :class:`Record` s (images + prompts + optional sources), one bucket per record."""

    def __init__(self, records: Sequence[Record], stage: str, buckets: Sequence[tuple[int, int]], recon_prompt: str = "") -> None:
        require(stage in STAGES, f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        self.records = list(records)
        self.stage = stage
        self.recon_prompt = recon_prompt
        self.buckets = list(buckets)
        self.sizes = [nearest_bucket(r.height, r.width, self.buckets) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def bucket_of(self, index: int) -> tuple[int, int]:
        return self.sizes[index]

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        rec = self.records[index]
        size = self.sizes[index]
        try:
            target = fit_to_bucket(read_image(rec.image), size)
            images = [fit_to_bucket(read_image(rec.source), size)] if rec.source else []
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            return Skipped(f"unreadable image ({type(exc).__name__})")
        try:
            return stage_sample({"prompt": rec.prompt, "target": target, "images": images}, self.stage, self.recon_prompt)
        except ValueError as exc:
            return Skipped(str(exc))


class SampleDataset(torch.utils.data.Dataset):
    """Any map-style dataset of sample dicts, checked, fitted to buckets and turned into ``stage``'s samples.

    A dataset that knows each item's size cheaply may define ``bucket_of(index) -> (h, w)`` or
    ``size_of(index) -> (h, w)``; otherwise all items share the square ``image_size`` bucket.
    """

    def __init__(self, base, stage: str, buckets: Sequence[tuple[int, int]], recon_prompt: str = "") -> None:
        require(stage in STAGES, f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        self.base = base
        self.stage = stage
        self.recon_prompt = recon_prompt
        self.buckets = list(buckets)
        square = [b for b in self.buckets if b[0] == b[1]]
        self.default_bucket = max(square) if square else self.buckets[0]

    def __len__(self) -> int:
        return len(self.base)

    def bucket_of(self, index: int) -> tuple[int, int]:
        if hasattr(self.base, "size_of"):
            h, w = self.base.size_of(index)
            return nearest_bucket(h, w, self.buckets)
        return self.default_bucket

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        try:
            raw = self.base[index]
        except Exception as exc:  # noqa: BLE001 - a user's dataset may fail in any way; the sample is skipped and counted
            return Skipped(f"sample raised {type(exc).__name__}")
        return convert_sample(raw, self.stage, self.recon_prompt, self.bucket_of(index), self.buckets)


class ReplayMix(torch.utils.data.Dataset):
    """A later stage's dataset with text-to-image samples replayed in it (rehearsal against forgetting).

    The paper's editing stage (section 4.2) trains on editing data only; on a small budget that makes
    the model forget text-to-image (``docs/demo-and-ablations.md``, third run). Here each index of
    ``primary`` is replaced, with probability ``share``, by a random index of ``replay`` (a
    text-to-image dataset). The choice is drawn once from ``numpy.random.default_rng([seed,
    REPLAY_STREAM])``, so it is the same in every process and a resumed run sees the same samples.
    Batches may then mix edit and text-to-image samples (see :func:`collate`).
    """

    def __init__(self, primary, replay, share: float, seed: int = 0) -> None:
        require(0.0 <= share < 1.0, f"replay share {share} must be in [0, 1)")
        require(len(replay) > 0, "the replay dataset is empty")
        rng = np.random.default_rng([seed, REPLAY_STREAM])
        self.primary, self.replay = primary, replay
        self.use_replay = rng.random(len(primary)) < share
        self.replay_index = rng.integers(len(replay), size=len(primary))

    def __len__(self) -> int:
        return len(self.primary)

    def source(self, index: int) -> tuple[Any, int]:
        """(dataset, index in it) that dataset index ``index`` reads."""
        return (self.replay, int(self.replay_index[index])) if self.use_replay[index] else (self.primary, index)

    def bucket_of(self, index: int) -> tuple[int, int]:
        dataset, i = self.source(index)
        return dataset.bucket_of(i)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        dataset, i = self.source(index)
        return dataset[i]


def convert_sample(raw: Any, stage: str, recon_prompt: str, size: tuple[int, int] | None, buckets: Sequence[tuple[int, int]]) -> dict[str, Any] | Skipped:
    """Check a raw sample, fit it to ``size`` (or its nearest bucket) and make it ``stage``'s sample."""
    try:
        sample = check_sample(raw)
        target = sample["target"]
        size = size or nearest_bucket(target.shape[-2], target.shape[-1], buckets)
        sample["target"] = fit_to_bucket(target, size)
        sample["images"] = [fit_to_bucket(img, size) for img in sample["images"]]
        return stage_sample(sample, stage, recon_prompt)
    except (ValueError, TypeError) as exc:
        return Skipped(f"bad sample ({str(exc)[:80]})")


# --- batching ------------------------------------------------------------------------------------

class BucketBatchSampler:
    """Deterministic batches of one bucket each, split across processes.

    For epoch ``e`` the indices of every bucket are shuffled with ``numpy.random.default_rng([seed, e])``
    and cut into *global* batches of ``batch_size * num_replicas`` (the last one of a bucket is filled
    up by cycling that bucket, so no sample is left out); the global batches are then shuffled. Process
    ``rank`` takes its slice of every global batch, so every process runs the same number of steps on
    same-sized images. The order depends only on (seed, epoch): resuming at batch k of an epoch
    recomputes it and starts at k.
    """

    def __init__(self, buckets: Sequence[Any], batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        require(batch_size > 0, "batch size must be positive")
        require(len(buckets) > 0, "the dataset is empty")
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        groups: dict[Any, list[int]] = {}
        for i, b in enumerate(self.buckets):
            groups.setdefault(b, []).append(i)
        self.groups = [groups[k] for k in sorted(groups)]

    def global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        size = self.batch_size * self.num_replicas
        batches: list[list[int]] = []
        for group in self.groups:
            order = [group[i] for i in rng.permutation(len(group))] if self.shuffle else list(group)
            need = -len(order) % size
            order = order + [order[i % len(order)] for i in range(need)]
            batches.extend(order[i : i + size] for i in range(0, len(order), size))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This process's batches of ``epoch`` from batch ``start`` on."""
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [b[lo:hi] for b in self.global_batches(epoch)[start:]]

    def __len__(self) -> int:
        size = self.batch_size * self.num_replicas
        return sum(-(-len(g) // size) for g in self.groups)


def collate(samples: Sequence[dict[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack a batch; skipped samples are dropped and counted under ``'skipped'``.

    Targets of different sizes (a dataset without buckets) are fitted to the first sample's size. A
    sample without input images may share a batch with samples that have some (text-to-image replay in
    a later stage, :class:`ReplayMix`): the MLLM reads every prompt with its own list of images.
    """
    skipped: Counter = Counter(s.reason for s in samples if isinstance(s, Skipped))
    good = [s for s in samples if not isinstance(s, Skipped)]
    if not good:
        return {"prompts": [], "targets": None, "images": None, "skipped": skipped}
    size = tuple(good[0]["target"].shape[-2:])
    targets = torch.stack([fit_to_bucket(s["target"], size) for s in good])
    images = [[fit_to_bucket(i, size) for i in s["images"]] for s in good] if any(s["images"] for s in good) else None
    return {"prompts": [s["prompt"] for s in good], "targets": targets, "images": images, "skipped": skipped}


class StreamBatches:
    """Batches from an iterable of samples (no index: no buckets, resume replays the stream).

    Each global batch takes ``batch_size * num_replicas`` samples from the stream; process ``rank`` keeps
    its slice. When the iterable is exhausted it is iterated again (a new epoch) if it can be (a list,
    an ``IterableDataset``); a one-shot iterator ends training early with a message.
    """

    def __init__(self, iterable: Iterable, stage: str, buckets: Sequence[tuple[int, int]], batch_size: int, num_replicas: int = 1, rank: int = 0, recon_prompt: str = "") -> None:
        self.iterable = iterable
        self.stage = stage
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.recon_prompt = recon_prompt
        self.one_shot = iter(iterable) is iterable

    def epoch(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Batches of one pass over the iterable, skipping its first ``start`` global batches."""
        it = iter(self.iterable)
        size = self.batch_size * self.num_replicas
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        index = 0
        while True:
            chunk = []
            for _ in range(size):
                try:
                    chunk.append(next(it))
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - a user's generator may fail on one item; skip it, count it
                    chunk.append(Skipped(f"sample raised {type(exc).__name__}"))
            if len(chunk) < size:
                return
            if index >= start:
                mine = [c if isinstance(c, Skipped) else convert_sample(c, self.stage, self.recon_prompt, None, self.buckets) for c in chunk[lo:hi]]
                yield collate(mine)
            index += 1
