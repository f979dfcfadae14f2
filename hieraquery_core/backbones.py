"""Building the backbones of a HieraQuery model from its :class:`BackboneSpec`s.

Each backbone is either loaded with its library's ``from_pretrained`` from a local Hugging Face-format
folder (``local_files_only=True``, ``use_safetensors=True``: never a hub, never pickle) or built from
a config dict with random weights (tests, tiny demos, ShapesWorld). Nothing here is model logic.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderDC, AutoencoderKL, SanaTransformer2DModel, SD3Transformer2DModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Model,
)

from .config import BackboneSpec, ConnectorSpec
from .connector import Connector
from .dit import SOFTMAX_OPTION, DiffusionTransformer
from .errors import HieraQueryError, require
from .latent_codec import LatentCodec
from .mllm import FrozenMLLM
from .cpu_linear import cpu_linear_layers
from .word_tokenizer import build_word_tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
LOAD_KWARGS = {"local_files_only": True, "use_safetensors": True}


def resolve_folder(path: str, base_dir: Path | None, what: str) -> Path:
    """A backbone folder (relative paths are inside the checkpoint), checked to hold safetensors weights."""
    folder = Path(path)
    if not folder.is_absolute() and base_dir is not None:
        folder = base_dir / folder
    require(folder.is_dir(), f"the {what} folder {folder} does not exist; put a Hugging Face-format folder there or fix the path in config.json")
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise HieraQueryError(f"the {what} folder {folder} only has pickle weights ({', '.join(pickled)}); convert them to .safetensors (pickle files are never loaded)")
        raise HieraQueryError(f"the {what} folder {folder} has no .safetensors weights; copy the model's weights there")
    return folder


def load_tokenizer(folder: Path):
    """A causal LM's tokenizer. A generic ``tokenizers`` backend (our word tokenizers) is loaded as saved:
    ``AutoTokenizer`` would rebuild it as the model family's own tokenizer class and lose its vocabulary."""
    config_file = folder / "tokenizer_config.json"
    saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def build_mllm(spec: BackboneSpec, base_dir: Path | None = None) -> FrozenMLLM:
    """The frozen MLLM of Eq. 4 (Qwen2.5-VL or a text-only causal LM)."""
    if spec.path:
        folder = resolve_folder(spec.path, base_dir, "MLLM")
        if spec.kind == "qwen2_5_vl":
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, **LOAD_KWARGS)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, **LOAD_KWARGS)
            processor = load_tokenizer(folder)
        return FrozenMLLM(model, processor, spec.kind)
    require(spec.config is not None, "config.mllm needs a 'path' (local folder) or a 'config' (to build a random one)")
    words = spec.options.get("vocabulary")
    require(bool(words), "an MLLM built from a config needs options.vocabulary (a word list for its tokenizer)")
    tokenizer = build_word_tokenizer(words)
    if spec.kind == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        vision = spec.config.get("vision_config", {})
        patch, merge = vision.get("patch_size", 14), vision.get("spatial_merge_size", 2)
        pixels = int(spec.options.get("image_pixels", (patch * merge * 4) ** 2))
        image_processor = Qwen2VLImageProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=vision.get("temporal_patch_size", 2), min_pixels=pixels, max_pixels=pixels)
        video_processor = Qwen2VLVideoProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=vision.get("temporal_patch_size", 2))
        processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)
        ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"))}
        config = Qwen2_5_VLConfig(**{**spec.config, **ids})
        config.text_config.vocab_size = len(tokenizer)
        config.text_config.pad_token_id = tokenizer.pad_token_id
        config.text_config.bos_token_id = config.text_config.eos_token_id = tokenizer.eos_token_id
        model = Qwen2_5_VLForConditionalGeneration(config)
        model.generation_config.pad_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.eos_token_id
        return FrozenMLLM(model, processor, spec.kind)
    config = AutoConfig.for_model(**{**spec.config, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.eos_token_id})
    return FrozenMLLM(AutoModelForCausalLM.from_config(config), tokenizer, spec.kind)


DIT_CLASSES = {"sd3": SD3Transformer2DModel, "sana": SanaTransformer2DModel}
VAE_CLASSES = {"autoencoder_kl": AutoencoderKL, "autoencoder_dc": AutoencoderDC}


def build_dit(spec: BackboneSpec, base_dir: Path | None = None) -> DiffusionTransformer:
    """The shared-weight DiT of Eq. 5 (diffusers' SD3 or SANA transformer), its linear maps and 1x1 convolutions run on the CPU as its BLAS runs them fastest (cpu_linear.py)."""
    cls = DIT_CLASSES[spec.kind]
    if spec.path:
        transformer = cls.from_pretrained(resolve_folder(spec.path, base_dir, "DiT"), **LOAD_KWARGS)
    else:
        require(spec.config is not None, "config.dit needs a 'path' (local folder) or a 'config'")
        transformer = cls(**spec.config)
    dit = DiffusionTransformer(cpu_linear_layers(transformer), spec.kind)
    if SOFTMAX_OPTION in spec.options:
        dit.use_softmax_self_attention(spec.options[SOFTMAX_OPTION])
    return dit


def build_codec(spec: BackboneSpec, base_dir: Path | None = None) -> LatentCodec:
    """Pixel space, or a diffusers VAE (AutoencoderKL for SD3, AutoencoderDC for SANA)."""
    if spec.kind == "pixel":
        return LatentCodec("pixel")
    cls = VAE_CLASSES[spec.kind]
    if spec.path:
        return LatentCodec(spec.kind, cls.from_pretrained(resolve_folder(spec.path, base_dir, "VAE"), **LOAD_KWARGS))
    require(spec.config is not None, "config.codec needs a 'path' (local folder) or a 'config'")
    return LatentCodec(spec.kind, cls(**spec.config))


def build_connector(spec: ConnectorSpec, in_dim: int, dit: DiffusionTransformer, base_dir: Path | None = None) -> Connector:
    """g_theta, optionally initialised from a local Qwen2 folder (the paper starts from Qwen2.5-0.5B)."""
    encoder = None
    if spec.path:
        encoder = Qwen2Model.from_pretrained(resolve_folder(spec.path, base_dir, "connector"), attn_implementation="sdpa", **LOAD_KWARGS)
    return Connector(in_dim, spec, dit.caption_dim, dit.pooled_dim, encoder=encoder)
