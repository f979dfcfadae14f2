"""The HieraQuery trainer: the paper's three stages (section 4.2) on one CPU, one GPU or many, via accelerate.

    python -m train.train --stage t2i --config cfg.json --data pairs.jsonl --out runs/t2i --steps 10000
    python -m train.train --stage reconstruction --init-from runs/t2i/final --data pairs.jsonl --out runs/rec ...
    python -m train.train --stage edit --init-from runs/rec/final --data edits.jsonl --out runs/edit ...
    accelerate launch --config_file train/accelerate/ddp.yaml -m train.train ...   # several GPUs / nodes

Python API: :class:`TrainConfig` (every command-line flag), :class:`Trainer` (``Trainer(cfg, dataset=...,
callbacks=[...]).fit()``) and :func:`train` (the same in one call). Details: ``train/README.md``.

What a run folder holds::

    run.json                    the settings of the (last) launch
    train.log                   the log (loss per scale, lr, grad norm, speed, skipped samples)
    checkpoints/step-0000100/   trainer checkpoints (see train/state.py), every --save-every steps and at the end
    final/                      the trained model (hieraquery_core checkpoint folder): --init-from of the next stage

Determinism: the data order depends only on (seed, epoch); each optimizer step draws its dropout
decisions, noise and noise levels from a ``torch.Generator`` seeded by (seed, step, micro-batch, process);
the global RNG states of every process are saved too. So a run that is stopped and resumed with
``--resume`` ends with the same weights as one that ran straight through (``tests/test_train_resume.py``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hieraquery_core.backbones import DIT_CLASSES, resolve_folder
from hieraquery_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, save_checkpoint
from hieraquery_core.config import HieraQueryConfig
from hieraquery_core.errors import HieraQueryError, require
from hieraquery_core.model import HieraQuery, TrainingBatch, deepened
from hieraquery_core.plan import parse_plan
from hieraquery_core.shapesworld.spec import MIN_GAP

from . import state as st
from .data import (MAX_ASPECT_RATIO, MAX_WATERMARK_SCORE, MIN_CLIP_SCORE, STAGES, BucketBatchSampler, FileDataset, ReplayMix, SampleDataset,
                   SkipCounter, StreamBatches, collate, load_records, model_buckets)
from .optim import make_optimizer, make_scheduler

LOGGER = logging.getLogger("hieraquery.train")
Callback = Callable[["Trainer", int], None]
"""``callback(trainer, step)``: called every ``eval_every`` steps and at the end, on every process, with the
model in eval mode, under ``torch.no_grad()`` and with the training RNG streams preserved."""


@dataclass
class TrainConfig:
    """Every setting of a run; the command-line flags are these names with dashes."""

    stage: str = "t2i"
    out: str = "runs/hieraquery"
    config: str | HieraQueryConfig | None = None
    init_from: str | None = None
    mllm: str | None = None
    read_source: bool = False
    dit_blocks: int | None = None
    """Grow the model's DiT to this many blocks (``HieraQuery.deepen_dit``: the new ones start as the identity)."""
    softmax_new_blocks: bool = False
    """With ``dit_blocks``: the new blocks' self-attention is softmax attention instead of SANA's linear attention."""
    coarse_input: float | None = None
    """Let the DiT read the previous scale's image, its training copies noised up to this level (``HieraQuery.read_coarse``)."""
    data: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-5
    min_lr: float = 1e-6
    warmup: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 0.5
    save_every: int = 0
    keep_last: int = 2
    log_every: int = 10
    eval_every: int = 0
    eval_hook: str | None = None
    seed: int = 0
    workers: int = 0
    mixed_precision: str | None = None
    cpu: bool = False
    resume: str | None = None
    recon_prompt: str = ""
    replay_share: float = 0.0
    replay_data: str | None = None
    edit_distractors: float = 0.0
    caption_order: bool = False
    """ShapesWorld text-to-image scenes stand left to right in the order their prompt names the objects (``train.shapesworld_data``)."""
    category_weights: str = ""
    """ShapesWorld text-to-image prompts: how often each GenEval category is drawn, e.g. "position=3" (``weighted_categories``)."""
    position_colours: float = 0.0
    """ShapesWorld: the share of position prompts that name a colour for each object (``with_colours``)."""
    min_gap: int = MIN_GAP
    """ShapesWorld text-to-image scenes: background pixels between boxes (the spec's minimum by default; ``train.shapesworld_data``)."""
    ema_decay: float = 0.0
    timestep_logit_mean: float | None = None
    timestep_logit_std: float | None = None
    dropped_prompt_keeps_image: bool | None = None
    prompt_tokens: int | None = None
    """Set the model config's ``prompt_tokens`` (the DiT also reads the prompt's own last states; None: as it is)."""
    plan: str | None = None
    """Set the model config's ``plan`` (``"QUESTION=WORD,WORD;..."``, :func:`hieraquery_core.plan.parse_plan`; "" clears
    it; None: as it is): the frozen MLLM answers those questions about a prompt before it is encoded."""
    buckets: bool = True
    image_size: int | None = None
    max_aspect: float = MAX_ASPECT_RATIO
    min_clip: float = MIN_CLIP_SCORE
    max_watermark: float = MAX_WATERMARK_SCORE
    shapesworld_samples: int = 100_000
    embed_backbones: bool = True
    find_unused_parameters: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.stage in STAGES, f"--stage {self.stage!r} is not a stage; choose one of {', '.join(STAGES)}")
        require(self.batch_size > 0 and self.grad_accum > 0, "--batch-size and --grad-accum must be positive")
        require(self.steps is None or self.steps > 0, "--steps must be positive")
        require(self.epochs is None or self.epochs > 0, "--epochs must be positive")
        require(self.lr > 0 and 0 <= self.min_lr <= self.lr, f"need 0 <= --min-lr ({self.min_lr}) <= --lr ({self.lr}) and --lr > 0")
        require(0 <= self.replay_share < 1, f"--replay-share {self.replay_share} must be in [0, 1)")
        require(self.replay_share == 0 or self.stage != "t2i", "--replay-share replays text-to-image samples in a later stage; it means nothing with --stage t2i")
        require(self.replay_data is None or self.replay_share > 0, "--replay-data is only read with --replay-share > 0")
        require(0 <= self.edit_distractors <= 1, f"--edit-distractors {self.edit_distractors} must be in [0, 1]")
        require(not self.caption_order or self.data == "shapesworld", "--caption-order lays out ShapesWorld scenes; it needs --data shapesworld")
        require(not self.category_weights or self.data == "shapesworld", "--category-weights draws ShapesWorld prompts; it needs --data shapesworld")
        require(0 <= self.position_colours <= 1, f"--position-colours {self.position_colours} is a share of the position prompts; give a value in [0, 1]")
        require(not self.position_colours or self.data == "shapesworld", "--position-colours colours ShapesWorld prompts; it needs --data shapesworld")
        require(self.min_gap >= MIN_GAP, f"--min-gap {self.min_gap}: ShapesWorld scenes keep at least {MIN_GAP} px between boxes (the spec); give {MIN_GAP} or more")
        require(self.min_gap == MIN_GAP or self.data == "shapesworld", "--min-gap lays out ShapesWorld scenes; it needs --data shapesworld")
        if self.category_weights:
            from .shapesworld_data import weighted_categories

            weighted_categories(self.category_weights)  # one clear error for a malformed list, before anything runs
        require(self.edit_distractors == 0 or (self.stage == "edit" and self.data == "shapesworld"),
                "--edit-distractors shapes ShapesWorld's edit triplets; it needs --stage edit and --data shapesworld")
        if self.plan:
            parse_plan(self.plan)  # one clear error for a malformed plan, before anything runs
        require(0 <= self.ema_decay < 1, f"--ema-decay {self.ema_decay} must be in [0, 1) (0: no moving average; 0.999 is usual)")
        require(self.timestep_logit_std is None or self.timestep_logit_std > 0, f"--timestep-logit-std {self.timestep_logit_std} must be positive (SD3 uses 1.0)")

    def config_overrides(self) -> dict[str, Any]:
        """The model-config fields that --timestep-logit-mean, --timestep-logit-std, --dropped-prompt-keeps-image and
        --prompt-tokens and --plan replace (those given)."""
        given = {"timestep_logit_mean": self.timestep_logit_mean, "timestep_logit_std": self.timestep_logit_std,
                 "dropped_prompt_keeps_image": self.dropped_prompt_keeps_image, "prompt_tokens": self.prompt_tokens,
                 "plan": None if self.plan is None else parse_plan(self.plan)}
        return {k: v for k, v in given.items() if v is not None}


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    final: Path | None
    step: int
    losses: list[float] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


class LossModule(nn.Module):
    """Wraps :meth:`HieraQuery.training_loss` as ``forward`` so DDP / FSDP / mixed precision see the call."""

    def __init__(self, model: HieraQuery) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: TrainingBatch | None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is None:  # every sample of this process's batch was unreadable: take part in the step with a zero loss
            zero = sum(p.sum() for p in self.model.trainable_parameters()) * 0.0
            return zero, zero.detach().reshape(1).expand(len(self.model.config.scales))
        out = self.model.training_loss(batch, generator)
        return out.total, torch.stack([f.detach() for f in out.flow])


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch: a pure function of (seed, step, micro-batch, process)."""
    value = int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value & ((1 << 63) - 1))


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder from ``--init-from``: a model folder, a trainer checkpoint (its model/) or a run folder (final/ or its newest checkpoint)."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / st.MODEL_DIR / CONFIG_NAME).is_file():
        return path / st.MODEL_DIR
    if (path / "final" / CONFIG_NAME).is_file():
        return path / "final"
    latest = st.latest_checkpoint(path / "checkpoints")
    if latest is not None:
        return latest / st.MODEL_DIR
    raise HieraQueryError(f"--init-from {path}: no HieraQuery model there (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, a trainer checkpoint, or a run folder)")


def config_base_dir(config: HieraQueryConfig, config_path: Path) -> Path | None:
    """Relative backbone paths of a config JSON are looked up beside it if they exist there, else in the working directory."""
    relative = [s.path for s in (config.mllm, config.dit, config.codec) if s.path and not Path(s.path).is_absolute()]
    if config.connector.path and not Path(config.connector.path).is_absolute():
        relative.append(config.connector.path)
    if relative and all((config_path.parent / p).exists() for p in relative):
        return config_path.parent.absolute()
    return None


LATER_RESUMED_SETTINGS = ("replay_share", "edit_distractors", "caption_order", "category_weights", "position_colours", "min_gap", "ema_decay")
"""Options added after the trainer state's format: a checkpoint written before one existed is read with its default,
which is what every run did before the option was added."""
RESUMED_SETTINGS = ("stage", "seed", "batch_size", "grad_accum", *LATER_RESUMED_SETTINGS)
"""TrainConfig fields a checkpoint's state records and a resume must match (with the process count), because the
samples, their order or the averaged weights depend on them."""


def later_settings_defaults() -> dict[str, Any]:
    """What a checkpoint without one of :data:`LATER_RESUMED_SETTINGS` implies for it: the field's default."""
    return {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in LATER_RESUMED_SETTINGS}


COMPARED = ("scales", "image_size", "alignment", "timestep_sampling", "timestep_logit_mean", "timestep_logit_std", "prompt_dropout", "image_dropout",
            "dropped_prompt_keeps_image", "prompt_tokens", "coarse_input_noise", "plan")


def architecture(config: HieraQueryConfig) -> dict[str, Any]:
    """The parts of a config that must not change when resuming (paths and saved-away configs excluded)."""
    data = config.to_dict()
    out = {k: data[k] for k in COMPARED}
    out["kinds"] = {k: data[k]["kind"] for k in ("mllm", "dit", "codec")}
    out["connector"] = {k: v for k, v in data["connector"].items() if k != "path"}
    return out


def dit_depth(config: HieraQueryConfig, base_dir: Path | None) -> int:
    """How many blocks the DiT of ``config`` has (its inline config, or the diffusers config of its folder)."""
    cls = DIT_CLASSES[config.dit.kind]
    stated = cls.load_config(resolve_folder(config.dit.path, base_dir, "DiT")) if config.dit.path else config.dit.config
    return int(stated.get("num_layers", inspect.signature(cls).parameters["num_layers"].default))  # the class default where left out


def check_compatible(saved: HieraQueryConfig, wanted: HieraQueryConfig, where: Path) -> None:
    """One clear error when a checkpoint does not belong to this run's model configuration."""
    a, b = architecture(saved), architecture(wanted)
    diffs = [k for k in a if a[k] != b[k]]
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {a[k]} vs this run {b[k]}" for k in diffs)
        raise HieraQueryError(f"cannot resume from {where}: it was trained with a different model configuration ({detail}); resume with the run's own --config/--init-from, or start a new --out")


def parameter_table(model: nn.Module) -> dict[str, list[int]]:
    return {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def load_eval_hook(spec: str) -> Callback:
    """``module:function`` -> the callable."""
    require(":" in spec, f"--eval-hook {spec!r} must be 'module:function'")
    module, name = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise HieraQueryError(f"--eval-hook {spec!r} cannot be imported ({exc})") from exc


def make_accelerator(cfg: TrainConfig):
    """The ``accelerate.Accelerator`` of a run (all runs of one launch share accelerate's process state).

    Launched as several processes on a machine without GPUs, the processes run on the CPU (gloo); accelerate
    would otherwise start each one as an independent single process.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = cfg.cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)])


class TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record))


class Trainer:
    """One training run (one stage). Build it, then :meth:`fit`.

    ``dataset`` overrides ``cfg.data``: a map-style ``torch.utils.data.Dataset`` or any iterable yielding
    sample dicts ``{"prompt", "target", "images"?}`` (see :mod:`train.data`). ``callbacks`` are called every
    ``cfg.eval_every`` steps and at the end (see :data:`Callback`).
    """

    def __init__(self, cfg: TrainConfig, dataset: Any = None, callbacks: Sequence[Callback] = (), accelerator=None) -> None:
        from accelerate.utils import DistributedType

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        self.accelerator = accelerator or make_accelerator(cfg)
        acc = self.accelerator
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.sharded = acc.distributed_type == DistributedType.FSDP
        self.callbacks = list(callbacks)
        if cfg.eval_hook:
            self.callbacks.append(load_eval_hook(cfg.eval_hook))
        self.skips = SkipCounter()  # samples this process dropped while loading (summed over processes when reported)
        self.index_skips = SkipCounter()  # left out while indexing (every process indexes the same files: counted once)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.losses: list[float] = []
        self._setup_logging()
        resume_dir = self._resume_dir()
        self.model = self._build_model(resume_dir)
        require(cfg.stage == "t2i" or self.model.mllm.supports_images,
                f"the {cfg.stage} stage gives the MLLM images, and this model's MLLM ({self.model.config.mllm.kind}) is text-only; use a Qwen2.5-VL MLLM, or --stage t2i")
        self.model.train()
        self.dataset_source = dataset if dataset is not None else cfg.data
        self._setup_data()
        self.total_steps = self._total_steps()
        self.warmup = cfg.warmup if cfg.warmup is not None else min(1000, self.total_steps // 20)
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, self.warmup, cfg.min_lr)
        self.wrapped, self.optimizer = acc.prepare(LossModule(self.model), self.optimizer)
        self.ema = self._make_ema()
        # The scheduler is not given to accelerate: it would step it once per process; it follows optimizer steps here.
        if resume_dir is not None:
            self._load_state(resume_dir)
        else:
            from accelerate.utils import set_seed

            set_seed(cfg.seed, device_specific=True)
        if acc.is_main_process:
            st.write_json(self.out / "run.json", {"settings": {**dataclasses.asdict(cfg), "config": cfg.config.to_dict() if isinstance(cfg.config, HieraQueryConfig) else cfg.config}, "processes": acc.num_processes, "distributed": str(acc.distributed_type),
                                                  "mixed_precision": acc.mixed_precision, "total_steps": self.total_steps, "warmup": self.warmup})
        self.log(f"stage {cfg.stage}: {self.total_steps} steps (warmup {self.warmup}), {acc.num_processes} process(es) x batch {cfg.batch_size} x accumulation {cfg.grad_accum}, "
                 f"lr {cfg.min_lr:g} -> {cfg.lr:g} -> {cfg.min_lr:g}, {acc.distributed_type}, mixed precision {acc.mixed_precision}, "
                 f"{sum(p.numel() for p in self.model.trainable_parameters()):,} trainable parameters")

    # --- setup -----------------------------------------------------------------------------------

    def _setup_logging(self) -> None:
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False
        for handler in list(LOGGER.handlers):
            LOGGER.removeHandler(handler)
            handler.close()
        if self.accelerator.is_main_process:
            file_handler = logging.FileHandler(self.out / "train.log", encoding="utf-8")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            LOGGER.addHandler(file_handler)
            if self.cfg.progress:
                console = TqdmHandler()
                console.setFormatter(logging.Formatter("%(message)s"))
                LOGGER.addHandler(console)

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            LOGGER.info(message)

    def _resume_dir(self) -> Path | None:
        cfg = self.cfg
        existing = st.latest_checkpoint(self.ckpt_root)
        if not cfg.resume:
            require(existing is None, f"{self.out} already holds checkpoints ({existing.name if existing else ''}); pass --resume to continue that run, or choose another --out")
            return None
        if cfg.resume == "latest":
            if existing is None:
                self.log(f"--resume: no checkpoint in {self.ckpt_root} yet, starting from the beginning")
            return existing
        path = Path(cfg.resume)
        require(path.is_dir(), f"--resume {path}: no such checkpoint folder")
        st.read_state(path)
        return path

    def _build_model(self, resume_dir: Path | None) -> HieraQuery:
        cfg = self.cfg
        wanted: HieraQueryConfig | None = None
        base_dir = None
        if isinstance(cfg.config, HieraQueryConfig):  # from Python: a config object (relative paths: the working directory)
            wanted = copy.deepcopy(cfg.config)
        elif cfg.config:
            config_path = Path(cfg.config)
            wanted = HieraQueryConfig.load(config_path)
            base_dir = config_base_dir(wanted, config_path)
        elif cfg.init_from:
            base_dir = resolve_model_folder(cfg.init_from)
            wanted = HieraQueryConfig.load(base_dir / CONFIG_NAME)
        overrides = cfg.config_overrides()
        if wanted is not None:
            wanted = dataclasses.replace(wanted, **overrides)
            if cfg.dit_blocks is not None and cfg.dit_blocks != (depth := dit_depth(wanted, base_dir)):
                wanted = deepened(wanted, depth, cfg.dit_blocks)  # what the run trains: the model after --dit-blocks
        if resume_dir is not None:
            folder = resume_dir / st.MODEL_DIR
            saved = HieraQueryConfig.load(folder / CONFIG_NAME)
            if wanted is not None:  # what the run trains: the model after --coarse-input
                coarse = wanted.coarse_input_noise if cfg.coarse_input is None else cfg.coarse_input
                check_compatible(saved, dataclasses.replace(wanted, coarse_input_noise=coarse), resume_dir)
            self.log(f"resuming from {resume_dir}")
            return load_checkpoint(folder)
        if cfg.init_from:
            folder = resolve_model_folder(cfg.init_from)
            self.log(f"initialising from {folder}" + (f" (config: {overrides})" if overrides else ""))
            model = load_checkpoint(folder)
            model.config = dataclasses.replace(model.config, **overrides)
            if cfg.mllm:
                model.replace_mllm(cfg.mllm)
                self.log(f"its frozen MLLM replaced by {cfg.mllm}")
        else:
            require(wanted is not None, "give --config CONFIG.json (a HieraQueryConfig, for the first stage) or --init-from CHECKPOINT (the previous stage's final/)")
            require(not cfg.mllm, "--mllm replaces the MLLM of the --init-from model; for a new model from --config, set mllm.path in the config")
            torch.manual_seed(cfg.seed)
            model = HieraQuery.from_config(wanted, base_dir=base_dir)
            self.log(f"built a new model from {cfg.config if not isinstance(cfg.config, HieraQueryConfig) else 'a HieraQueryConfig (' + cfg.config.name + ')'}")
        if cfg.read_source and not model.reads_source:
            model.read_source()
            self.log(f"the DiT now also reads the input image's latents ({model.dit.in_channels} input channels, the new ones zero)")
        if cfg.coarse_input is not None and cfg.coarse_input != model.config.coarse_input_noise:
            model.read_coarse(cfg.coarse_input)
            self.log(f"the DiT now also reads the previous scale's image ({model.dit.in_channels} input channels), noised up to {cfg.coarse_input} in training")
        if cfg.dit_blocks is not None and cfg.dit_blocks != len(model.dit.blocks):
            model.deepen_dit(cfg.dit_blocks, cfg.softmax_new_blocks)
            self.log(f"the DiT now has {cfg.dit_blocks} blocks (the new ones start as the identity; alignment reads block {model.config.alignment.block}; "
                     f"softmax self-attention in blocks {model.dit.softmax_self_attention_blocks()})")
        return model

    def _open_data(self, source: Any, stage: str) -> Any:
        """``source`` as ``stage``'s samples: a map-style dataset (with ``bucket_of``) or, for an iterable, a :class:`StreamBatches`."""
        cfg, acc = self.cfg, self.accelerator
        if isinstance(source, (str, Path)):
            if str(source) == "shapesworld":
                from .shapesworld_data import shapesworld_dataset, weighted_categories

                source = shapesworld_dataset(stage, cfg.shapesworld_samples, seed=cfg.seed, edit_distractors=cfg.edit_distractors,
                                             caption_order=cfg.caption_order, categories=weighted_categories(cfg.category_weights),
                                             position_colours=cfg.position_colours, min_gap=cfg.min_gap)
            else:
                records = load_records(source, stage, self.index_skips, cfg.max_aspect, cfg.min_clip, cfg.max_watermark)
                dataset = FileDataset(records, stage, self.buckets, cfg.recon_prompt)
                self.log(f"data ({stage}): {len(records)} samples from {source} in {len(set(dataset.sizes))} bucket(s); left out while indexing: {self.index_skips.summary()}")
                return dataset
        if hasattr(source, "__getitem__") and hasattr(source, "__len__"):
            dataset = SampleDataset(source, stage, self.buckets, cfg.recon_prompt)
            self.log(f"data ({stage}): {len(dataset)} samples from {type(source).__name__}")
            return dataset
        self.log(f"data ({stage}): a stream from {type(source).__name__} (no index: resume replays it)")
        return StreamBatches(source, stage, self.buckets, cfg.batch_size, acc.num_processes, acc.process_index, cfg.recon_prompt)

    def _setup_data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        self.buckets = model_buckets(self.model, cfg.image_size, cfg.max_aspect, square_only=not cfg.buckets)
        source = self.dataset_source
        require(source is not None, "give --data (a folder, a .jsonl manifest or 'shapesworld') or pass a dataset")
        data = self._open_data(source, cfg.stage)
        if cfg.replay_share > 0:
            require(cfg.replay_data is not None or cfg.stage == "reconstruction" or str(source) == "shapesworld",
                    "--replay-share in the edit stage needs --replay-data (text-to-image pairs: a manifest, a folder or 'shapesworld'): edits carry instructions, not captions")
            replay = self._open_data(cfg.replay_data or source, "t2i")
            require(not isinstance(data, StreamBatches) and not isinstance(replay, StreamBatches),
                    "--replay-share needs indexable data (a folder, a manifest, 'shapesworld' or a map-style dataset), not a stream")
            data = ReplayMix(data, replay, cfg.replay_share, cfg.seed)
            self.log(f"replay: {int(data.use_replay.sum())} of {len(data)} samples ({cfg.replay_share:.0%}) are text-to-image samples")
        self.stream = data if isinstance(data, StreamBatches) else None
        self.dataset = None if self.stream is not None else data
        if self.dataset is not None:
            self.sampler = BucketBatchSampler([self.dataset.bucket_of(i) for i in range(len(self.dataset))], cfg.batch_size, acc.num_processes, acc.process_index, cfg.seed)

    def _make_ema(self):
        """With ``--ema-decay``: diffusers' ``EMAModel`` over the trainable parameters (None without)."""
        if self.cfg.ema_decay == 0:
            return None
        require(not (self.sharded or self.deepspeed), "--ema-decay averages whole parameters, and under FSDP / DeepSpeed each process holds a shard; "
                                                        "train with DDP (train/accelerate/ddp.yaml) or without --ema-decay")
        from diffusers.training_utils import EMAModel

        self.log(f"moving average of the weights: decay {self.cfg.ema_decay} (final/ and evaluations use the averaged weights; checkpoints keep both)")
        return EMAModel(self.model.trainable_parameters(), decay=self.cfg.ema_decay)

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside the block the model holds the moving average of its weights (with ``--ema-decay``; otherwise unchanged)."""
        if self.ema is None:
            yield
            return
        params = self.model.trainable_parameters()
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def _total_steps(self) -> int:
        cfg = self.cfg
        if cfg.steps:
            return cfg.steps
        require(cfg.epochs is not None, "give --steps N or --epochs E (the paper trains each stage for two epochs)")
        require(self.stream is None, "--epochs needs a dataset with a length; give --steps for a stream")
        return max(1, math.ceil(cfg.epochs * len(self.sampler) / cfg.grad_accum))

    # --- data ----------------------------------------------------------------------------------------

    def batches(self) -> Iterator[dict[str, Any]]:
        """Collated batches from the current position on, forever (epoch after epoch)."""
        while True:
            if self.stream is not None:
                produced = 0
                for batch in self.stream.epoch(self.batch_in_epoch):
                    produced += 1
                    self.batch_in_epoch += 1
                    yield batch
                require(produced > 0 or self.batch_in_epoch > 0, "the data stream yielded no complete batch")
                if self.stream.one_shot:
                    raise HieraQueryError(f"the data iterator ran out after {self.batch_in_epoch} batches at step {self.step}; pass a re-iterable dataset or fewer --steps")
            else:
                order = self.sampler.batches(self.epoch, self.batch_in_epoch)
                loader = torch.utils.data.DataLoader(
                    self.dataset, batch_sampler=order, collate_fn=collate, num_workers=self.cfg.workers,
                    pin_memory=self.accelerator.device.type == "cuda", generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch),
                )
                for batch in loader:
                    self.batch_in_epoch += 1
                    yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    # --- training ------------------------------------------------------------------------------------

    def training_batch(self, batch: dict[str, Any]) -> TrainingBatch | None:
        self.skips.update(batch["skipped"])
        if not batch["prompts"]:
            return None
        return TrainingBatch(batch["prompts"], batch["targets"], batch["images"])

    def train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[float, list[float], float | None]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (loss, per-scale losses, grad norm)."""
        acc, cfg = self.accelerator, self.cfg
        total = torch.zeros((), device=acc.device)
        scales = torch.zeros(len(self.model.config.scales), device=acc.device)
        for micro in range(cfg.grad_accum):
            batch = self.training_batch(next(batches))
            generator = step_generator(cfg.seed, self.step, micro, acc.process_index)
            sync = micro == cfg.grad_accum - 1
            with acc.no_sync(self.wrapped) if not sync and acc.num_processes > 1 else nullcontext():
                loss, per_scale = self.wrapped(batch, generator)
                acc.backward(loss / cfg.grad_accum)
            total += loss.detach() / cfg.grad_accum
            scales += per_scale.detach().to(scales.device) / cfg.grad_accum
        norm = None
        if cfg.grad_clip > 0:
            norm = acc.clip_grad_norm_(self.model.trainable_parameters() if not (self.sharded or self.deepspeed) else self.wrapped.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step(self.model.trainable_parameters())
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total, scales, norm

    def fit(self) -> TrainResult:
        """Train to ``total_steps``, checkpointing every ``save_every`` steps and at the end."""
        from tqdm import tqdm

        acc, cfg = self.accelerator, self.cfg
        batches = self.batches()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (acc.is_main_process and cfg.progress), desc=f"{cfg.stage}", dynamic_ncols=True)
        started, window_steps = time.time(), 0
        while self.step < self.total_steps:
            lr = self.optimizer.param_groups[0]["lr"]
            total, scales, norm = self.train_step(batches)
            window_steps += 1
            loss_value = float(acc.reduce(total.reshape(1), "mean").item()) if acc.num_processes > 1 else float(total.item())
            self.losses.append(loss_value)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == self.total_steps):
                scale_values = (acc.reduce(scales, "mean") if acc.num_processes > 1 else scales).tolist()
                speed = window_steps * cfg.batch_size * cfg.grad_accum * acc.num_processes / max(time.time() - started, 1e-9)
                skipped = self.gathered_skips()
                self.log(f"step {self.step}/{self.total_steps} epoch {self.epoch} loss {loss_value:.4f} scales [{', '.join(f'{v:.4f}' for v in scale_values)}] "
                         f"lr {lr:.3e} grad_norm {float(norm) if norm is not None else float('nan'):.3f} {speed:.1f} samples/s skipped {sum(skipped.values())} ({_summary(skipped)})")
                started, window_steps = time.time(), 0
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self.save()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                self.run_callbacks()
        bar.close()
        self.check_in_sync()
        self.save()
        final = self.export()
        self.run_callbacks()
        skipped = self.gathered_skips()
        self.log(f"done: step {self.step}, final model {final}; samples skipped: {sum(skipped.values())} ({_summary(skipped)})")
        return TrainResult(final, self.step, self.losses, dict(skipped))

    def parameter_checksums(self) -> list[list[float]] | None:
        """Per process, (sum, sum of squares, weighted sum) of the trainable parameters, in float64; identical
        lists mean the processes hold the same weights (DDP keeps replicas in sync). None under FSDP/DeepSpeed
        (each process holds a shard)."""
        if self.sharded or self.deepspeed:
            return None
        total = torch.zeros(3, dtype=torch.float64)
        for i, p in enumerate(self.model.trainable_parameters()):
            x = p.detach().double().cpu()
            total += torch.stack([x.sum(), (x * x).sum(), x.sum() * (i + 1)])
        if self.accelerator.num_processes == 1:
            return [total.tolist()]
        from accelerate.utils import gather_object

        return gather_object([total.tolist()])

    def check_in_sync(self) -> None:
        """Log the per-process checksums; raise if the replicas have drifted apart."""
        sums = self.parameter_checksums()
        if sums is None or len(sums) < 2:
            return
        same = all(s == sums[0] for s in sums)
        self.log(f"parameter checksums of {len(sums)} processes: {'identical' if same else 'DIFFERENT'} {sums}")
        require(same, f"the processes' parameters differ after step {self.step} ({sums}); the replicas are out of sync")

    def gathered_skips(self, loading_only: bool = False) -> Counter:
        """Skipped-sample counts: loading summed over processes, plus (unless ``loading_only``) indexing, once."""
        total: Counter = Counter()
        if self.accelerator.num_processes == 1:
            total.update(self.skips.counts)
        else:
            from accelerate.utils import gather_object

            for counts in gather_object([dict(self.skips.counts)]):
                total.update(counts)
        if not loading_only:
            total.update(self.index_skips.counts)
        return total

    def run_callbacks(self) -> None:
        if not self.callbacks:
            return
        self.model.eval()
        try:
            with st.preserved_rng(), torch.no_grad(), self.averaged_weights():
                for callback in self.callbacks:
                    callback(self, self.step)
        finally:
            self.model.train()

    # --- checkpoints ---------------------------------------------------------------------------------

    def unwrapped_model(self) -> HieraQuery:
        return self.accelerator.unwrap_model(self.wrapped).model

    def _model_for_saving(self) -> HieraQuery | None:
        """A model whose weights can be written as a folder: the model itself, or (FSDP, DeepSpeed) a CPU copy
        filled with the gathered full state dict, on the main process only (other processes return None)."""
        if not (self.sharded or self.deepspeed):
            return self.unwrapped_model()
        state = self.accelerator.get_state_dict(self.wrapped)  # a collective: every process calls it
        if not self.accelerator.is_main_process:
            return None
        copy = HieraQuery.from_config(self.model.config, base_dir=self.model.source_dir)
        copy.load_state_dict({k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()})
        return copy

    def save(self) -> Path:
        """Write ``checkpoints/step-N`` (model, optimizer, scheduler, RNG of every process, data position) atomically."""
        acc, cfg = self.accelerator, self.cfg
        target = self.ckpt_root / st.step_dir_name(self.step)
        tmp = st.temporary_dir(target)
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        st.save_rng(tmp / st.rng_name(acc.process_index))
        model = self._model_for_saving()
        skipped_loading = self.gathered_skips(loading_only=True)  # a collective: every process calls it
        optimizer_state = None
        if not self.deepspeed:
            optimizer_state = st.optimizer_state_dict(self.wrapped, self.optimizer.optimizer)
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(model, tmp / st.MODEL_DIR, embed_backbones=False)
            optimizer_json = st.save_optimizer(tmp / st.OPTIMIZER_NAME, optimizer_state) if optimizer_state is not None else None
            if self.ema is not None:
                st.save_ema(tmp / st.EMA_NAME, list(parameter_table(self.model)), self.ema.shadow_params)
            scaler = acc.scaler.state_dict() if getattr(acc, "scaler", None) is not None else None
            st.write_json(tmp / st.STATE_NAME, {
                "format": st.STATE_FORMAT, "format_version": st.STATE_VERSION,
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                **{name: getattr(cfg, name) for name in RESUMED_SETTINGS}, "ema_step": self.ema.optimization_step if self.ema is not None else None,
                "num_processes": acc.num_processes, "total_steps": self.total_steps, "warmup": self.warmup,
                "lr": cfg.lr, "min_lr": cfg.min_lr, "scheduler": st.scheduler_state(self.scheduler),
                "grad_scaler": st.jsonable(scaler) if scaler is not None else None,
                "optimizer": optimizer_json, "parameters": parameter_table(self.unwrapped_model()) if not (self.sharded or self.deepspeed) else parameter_table(model),
                "skipped": dict(skipped_loading), "losses_tail": self.losses[-100:],
                "versions": _versions(),
            })
            st.commit_dir(tmp, target)
            st.prune(self.ckpt_root, cfg.keep_last)
            self.log(f"saved {target}")
        acc.wait_for_everyone()
        return target

    def _load_state(self, folder: Path) -> None:
        acc, cfg = self.accelerator, self.cfg
        data = st.read_state(folder)
        data = {**later_settings_defaults(), **data}
        now = {"num_processes": acc.num_processes, **{name: getattr(cfg, name) for name in RESUMED_SETTINGS}}
        mismatch = [f"{k} {data.get(k)} (now {v})" for k, v in now.items() if data.get(k) != v]
        require(not mismatch, f"cannot resume from {folder} exactly: it was written with {', '.join(mismatch)}; use the same settings (or start a new --out)")
        saved_params = data["parameters"]
        current = parameter_table(self.model)
        if saved_params != current:
            diff = sorted(set(saved_params) ^ set(current))[:5] or [k for k in current if saved_params.get(k) != current[k]][:5]
            raise HieraQueryError(f"cannot resume from {folder}: its trainable parameters differ from this model's (e.g. {diff}); it belongs to a different configuration")
        if data["total_steps"] != self.total_steps or data["warmup"] != self.warmup or data["lr"] != cfg.lr or data["min_lr"] != cfg.min_lr:
            self.log(f"note: the schedule changed (checkpoint: {data['total_steps']} steps, warmup {data['warmup']}, lr {data['lr']}, min {data['min_lr']}); "
                     "the learning rate follows the new one from here, so this run is not identical to an uninterrupted one")
        if data["optimizer"] is not None and not self.deepspeed:
            state = st.load_optimizer(folder / st.OPTIMIZER_NAME, data["optimizer"])
            st.load_optimizer_state_dict(self.wrapped, self.optimizer.optimizer, state)
        elif self.deepspeed:
            self.log("warning: under DeepSpeed the optimizer moments are not restored (DeepSpeed keeps them in its own pickled format); Adam restarts its moments")
        sched = dict(data["scheduler"])
        if data["total_steps"] == self.total_steps and data["warmup"] == self.warmup:
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), **sched})
        else:
            self.scheduler.last_epoch = sched["last_epoch"] - 1
            self.scheduler.step()
        if self.ema is not None:
            with torch.no_grad():
                for shadow, saved in zip(self.ema.shadow_params, st.load_ema(folder / st.EMA_NAME, list(parameter_table(self.model)))):
                    shadow.copy_(saved)
            self.ema.optimization_step = data["ema_step"]
        if data.get("grad_scaler") and getattr(acc, "scaler", None) is not None:
            acc.scaler.load_state_dict(data["grad_scaler"])
        st.load_rng(folder / st.rng_name(acc.process_index))
        self.step, self.epoch, self.batch_in_epoch = data["step"], data["epoch"], data["batch_in_epoch"]
        if acc.is_main_process:  # the saved counts are the sum over processes: one process takes them back
            self.skips.update(data.get("skipped", {}))
        self.losses = list(data.get("losses_tail", []))
        self.log(f"resumed at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch}), lr {self.optimizer.param_groups[0]['lr']:.3e}")

    def export(self) -> Path | None:
        """Write the trained model (with ``--ema-decay``, its moving average) to ``out/final`` (a hieraquery_core checkpoint folder, atomically)."""
        path = None
        with self.averaged_weights():
            model = self._model_for_saving()
            if self.accelerator.is_main_process:
                path = save_checkpoint(model, self.out / "final", embed_backbones=self.cfg.embed_backbones)
                self.log(f"wrote the {'averaged ' if self.ema is not None else ''}model to {path}")
        self.accelerator.wait_for_everyone()
        return path


def _summary(counts: Counter | dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import transformers

    return {"torch": torch.__version__, "accelerate": accelerate.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__}


def train(cfg: TrainConfig, dataset: Any = None, callbacks: Sequence[Callback] = (), accelerator=None) -> TrainResult:
    """Run one stage: ``Trainer(cfg, dataset, callbacks, accelerator).fit()``."""
    return Trainer(cfg, dataset, callbacks, accelerator).fit()


# --- command line ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m train.train", description="Train HieraQuery: one stage (t2i, reconstruction, edit) per run. See train/README.md.")
    p.add_argument("--stage", choices=STAGES, required=True, help="t2i: text-to-image pretraining; reconstruction: the image is the input and the target; edit: instruction editing")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", help="a HieraQueryConfig JSON: build a new model (first stage)")
    src.add_argument("--init-from", help="start from a model: a checkpoint folder, a run folder (its final/) or a trainer checkpoint")
    p.add_argument("--mllm", help="with --init-from: replace that model's frozen MLLM by this folder (same hidden and vision feature sizes, e.g. a ShapesWorld MLLM whose vision tower was retrained)")
    p.add_argument("--read-source", action="store_true",
                   help="widen the DiT to also read the input image's latents (InstructPix2Pix's concatenation, zero-initialised; a project extension for edits that keep the picture)")
    p.add_argument("--dit-blocks", type=int,
                   help="grow the model's SANA DiT to this many blocks, each new one a copy of the block before it that starts as the identity (a project extension: more capacity without retraining)")
    p.add_argument("--softmax-new-blocks", action="store_true",
                   help="with --dit-blocks: the new blocks' self-attention is softmax attention (torch SDPA) instead of SANA's linear attention")
    p.add_argument("--coarse-input", type=float, metavar="NOISE",
                   help="widen the DiT to also read the previous scale's image, upsampled (cascaded diffusion's low-resolution conditioning, zero-initialised; "
                        "a project extension); its training copies are noised to a level drawn in [0, NOISE], e.g. 0.2")
    p.add_argument("--data", required=True, help="a folder (NAME.png + NAME.txt [+ NAME.source.png]), a .jsonl manifest, or 'shapesworld'")
    p.add_argument("--out", required=True, help="the run folder (log, checkpoints, final/)")
    p.add_argument("--steps", type=int, help="optimizer steps (or give --epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data (the paper: 2 per stage)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per process per micro-batch (default %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimizer step (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (paper: 5e-5)")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="start of warmup and end of the cosine (paper: 1e-6)")
    p.add_argument("--warmup", type=int, help="warmup steps (default: 5%% of the steps, at most 1000)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm, 0 to disable (default %(default)s, MetaQuery's)")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (and always at the end)")
    p.add_argument("--keep-last", type=int, default=d.keep_last, help="step checkpoints to keep (0: all)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="call --eval-hook every N steps (and at the end)")
    p.add_argument("--eval-hook", help="module:function called as function(trainer, step)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="default: accelerate's config")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--resume", nargs="?", const="latest", help="continue from the newest checkpoint in --out (or from the folder given)")
    p.add_argument("--recon-prompt", default=d.recon_prompt, help="reconstruction stage's prompt (default: empty; see train/README.md)")
    p.add_argument("--replay-share", type=float, default=d.replay_share,
                   help="reconstruction/edit stages: share of the samples replaced by text-to-image samples, against forgetting (default %(default)s: the paper's recipe)")
    p.add_argument("--replay-data", help="the text-to-image data replayed (default: --data, e.g. 'shapesworld')")
    p.add_argument("--caption-order", action="store_true",
                   help="--data shapesworld: text-to-image scenes stand left to right in the order their prompt names the objects (the spec's caption order)")
    p.add_argument("--category-weights", default=d.category_weights, metavar="CATEGORY=N,...",
                   help="--data shapesworld: draw text-to-image prompts of these GenEval categories N times as often as the others, e.g. position=3 "
                        "(replayed samples too; default: each category alike, the spec's stream)")
    p.add_argument("--position-colours", type=float, default=d.position_colours, metavar="SHARE",
                   help="--data shapesworld: this share of the text-to-image position prompts name a colour for each object ('a red circle above a blue "
                        "square'; only colours of training strings, replayed samples too; default %(default)s: the spec's stream)")
    p.add_argument("--min-gap", type=int, default=d.min_gap, metavar="PX",
                   help="--data shapesworld: text-to-image scenes keep at least PX background pixels between boxes (default %(default)s: the spec's minimum; "
                        "4 keeps neighbouring squares apart at the 16 px scale)")
    p.add_argument("--edit-distractors", type=float, default=d.edit_distractors,
                   help="--data shapesworld, edit stage: share of the recolours and removals whose named object shares its colour with another "
                        "object, so that only the shape word tells them apart (default %(default)s: the spec's distribution)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay,
                   help="keep an exponential moving average of the weights with this decay (diffusers' EMAModel; e.g. 0.999) and export it as final/ (default: off)")
    p.add_argument("--timestep-logit-mean", type=float,
                   help="training noise levels are sigmoid(N(mean, std)) (SD3's logit-normal); a positive mean trains nearer pure noise (default: the model config's, 0)")
    p.add_argument("--timestep-logit-std", type=float, help="the std of that normal (default: the model config's, 1)")
    p.add_argument("--dropped-prompt-keeps-image", action="store_true", default=None,
                   help="a sample whose prompt is dropped for guidance but whose input image is kept trains towards that image "
                        "(\"no instruction\" = reconstruction) instead of its target; saved in the model config (default: the config's, off)")
    p.add_argument("--prompt-tokens", type=int, metavar="P",
                   help="the DiT also reads the MLLM's states at the prompt's last P positions, before each scale's query states "
                        "(a project extension, docs/design.md; saved in the model config; default: the config's, 0 = the paper's queries alone)")
    p.add_argument("--plan", metavar="QUESTION=WORD,...;...",
                   help="the frozen MLLM answers each QUESTION about a prompt containing one of its WORDs, and the answers join the prompt "
                        "(a project extension, docs/design.md \"Reason, then paint\"; saved in the model config; '' clears it; default: the config's, none)")
    p.add_argument("--no-buckets", dest="buckets", action="store_false", help="square image_size crops instead of aspect-ratio buckets")
    p.add_argument("--image-size", type=int, help="bucket area image_size^2 (default: the model's config.image_size)")
    p.add_argument("--max-aspect", type=float, default=d.max_aspect)
    p.add_argument("--min-clip", type=float, default=d.min_clip)
    p.add_argument("--max-watermark", type=float, default=d.max_watermark)
    p.add_argument("--shapesworld-samples", type=int, default=d.shapesworld_samples, help="samples per epoch of --data shapesworld")
    p.add_argument("--no-embed-backbones", dest="embed_backbones", action="store_false", help="final/ refers to the MLLM/VAE folders instead of copying them")
    p.add_argument("--find-unused-parameters", action="store_true", help="DDP: allow trainable parameters that get no gradient")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or console log (the log file is still written)")
    return p


def quiet_libraries() -> None:
    """No per-file progress bars from transformers / diffusers while saving and loading (the trainer has its own)."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        cfg = TrainConfig(**vars(args))
        result = train(cfg)
    except HieraQueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.final is not None:
        print(json.dumps({"final": str(result.final), "step": result.step, "last_loss": result.losses[-1] if result.losses else None, "skipped": result.skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
