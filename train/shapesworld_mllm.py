"""ShapesWorld's frozen MLLM: a small Qwen2.5-VL pretrained once on captions and questions.

The paper (section 3, Eq. 4; section 4.2) keeps a pretrained MLLM frozen and reads its hidden states at the
learnable query positions; its vision encoder is the target of the representation alignment (section 3.2).
ShapesWorld has no pretrained MLLM, so this module makes one: transformers' ``Qwen2_5_VLForConditionalGeneration``
(built through :func:`hieraquery_core.backbones.build_mllm` with a word tokenizer over the world's vocabulary)
trained with next-token loss on the answer tokens given image + question, where the question is either one
of the three ShapesWorld questions or "describe the image" (answer: the caption), and, with ``--text-fraction``,
questions about a prompt or caption given as text with no image ("a red circle . what color is the circle"),
and, with ``--repeat-fraction``, the text asked back ("a red circle . describe it" -> "a red circle"), which a real
MLLM's text pretraining would have covered: without the repeats the shape words collapse in the query states
(docs/demo-and-ablations.md section 1). This is *not* a HieraQuery stage: it happens once, before, and the
result is saved as a Hugging Face folder and then frozen. The committed MLLM's recipe:

    python -m train.shapesworld_mllm --steps 6000 --lr 2e-3 --seed 1 --text-fraction 0.5 --repeat-fraction 0.5 --out hieraquery_core/assets/shapesworld-mllm
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from hieraquery_core.backbones import build_codec, build_mllm
from hieraquery_core.checkpoint import replace_directory
from hieraquery_core.config import BackboneSpec
from hieraquery_core.errors import HieraQueryError
from hieraquery_core.latent_codec import LatentCodec
from hieraquery_core.mllm import FrozenMLLM, ImageList
from hieraquery_core.shapesworld import (HELDOUT_PROMPTS, TRAIN_PROMPTS, random_scene, relation_text_question, relation_which_question, render, spec,
                                         sample_caption, sample_question, sample_relation_text_question, sample_text_question, sample_training_text)
from hieraquery_core.shapesworld.evaluate import same_place
from hieraquery_core.shapesworld.understanding import GROUNDING_WORDS, RELATION_KINDS, parse_box, parse_question
from hieraquery_core.tiny import TINY_VOCABULARY
from hieraquery_core.word_tokenizer import SPECIAL_TOKENS, build_word_tokenizer
from train.backbone_pretraining import pretrain_loop

DESCRIBE = "describe the image"
"""The captioning question (the caption is the canonical prompt, spec "Understanding")."""
REPEAT = "describe it"
"""The question of a text-only repeat example ("a red circle . describe it" -> "a red circle", ``--repeat-fraction``)."""
TEXT_SEPARATOR = "."
"""Between the text and the question of a text-only example ("a red circle . what color is the circle")."""
ASSET_DIR = Path(__file__).resolve().parents[1] / "hieraquery_core" / "assets" / "shapesworld-mllm"
WHICH_ASSET_DIR = ASSET_DIR.with_name("shapesworld-mllm-which")
"""ASSET_DIR's MLLM continued with "which object stands on this side" questions (``--resume ASSET_DIR --relation-kind
which``, docs/demo-and-ablations.md section 3): the frozen MLLM of the bundled demo checkpoint since 2026-12-05."""
VAE_DIR = ASSET_DIR.with_name("shapesworld-vae")
TRAIN_SEED, EVAL_SEED = 1, 0x45564C  # separate random streams: evaluation scenes are never trained on


def shapesworld_mllm_spec(width: int = 128, layers: int = 4, vision_width: int = 64, vision_depth: int = 3, patch: int = 8) -> BackboneSpec:
    """A Qwen2.5-VL sized for 64x64 ShapesWorld images (patch 8, merge 2 -> a 4x4 grid of image tokens)."""
    heads = max(2, width // 32)
    half = width // heads // 2
    spatial = (half - half // 4) // 2
    mrope = [half - 2 * spatial, spatial, spatial]  # temporal, height, width sections of the rotary half-dimension
    text = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                max_position_embeddings=512, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope})
    vision = dict(depth=vision_depth, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2, out_hidden_size=width, patch_size=patch,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=64, fullatt_block_indexes=list(range(vision_depth)))
    return BackboneSpec("qwen2_5_vl", config={"text_config": text, "vision_config": vision}, options={"vocabulary": list(TINY_VOCABULARY), "image_pixels": 64 * 64})


def pixels_of(scenes) -> torch.Tensor:
    """Rendered scenes as float [B, 3, 64, 64] in [0, 1]."""
    return torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255.0


def sample_examples(rng: np.random.Generator, n: int, caption_fraction: float = 0.4, text_fraction: float = 0.0,
                    repeat_fraction: float = 0.0, grounding_fraction: float = 0.0, relation_fraction: float = 0.0,
                    relation_colours: float = 0.0, relation_kind: str = "yes_no") -> tuple[list[list[torch.Tensor]], list[str], list[str]]:
    """``n`` (images, question, answer) examples, ``images`` a list of one rendered scene or empty.

    A ``grounding_fraction`` of them are grounding questions ("where is the red circle" -> "10 21 31 42",
    ``hieraquery_core.shapesworld.understanding``).
    A ``relation_fraction`` of them are relation questions about a position prompt given as text, with no image
    ("a circle above a square . is the square below the circle" -> "yes", ``sample_relation_text_question``;
    ``relation_colours`` of those prompts name a colour for each object, "a red circle above a blue square"; with
    ``relation_kind`` "which" the question asks for the object on one side instead, ". what is below" -> "square").
    A ``text_fraction`` of them have no image: ``repeat_fraction`` of those ask for the text back
    ("{text} . describe it" -> the text, a training prompt or caption, :func:`sample_training_text`), the others
    are questions the text settles (``sample_text_question``: "{text} . {question}"). Of the rest,
    ``caption_fraction`` are captions ("describe the image") and the others the three question kinds about the image.
    """
    images, questions, answers = [], [], []
    for _ in range(n):
        if grounding_fraction and rng.random() < grounding_fraction:  # no draw at 0, as for the text examples
            scene, question, answer = sample_question(rng, kind="where")
            images.append([pixels_of([scene])[0]]), questions.append(question), answers.append(answer)
            continue
        relation = bool(relation_fraction) and rng.random() < relation_fraction  # no draw at 0
        if relation or (text_fraction and rng.random() < text_fraction):  # no draw at 0: the image-only stream stays as it was
            if relation:
                text, question, answer = sample_relation_text_question(rng, relation_colours, relation_kind)
            elif repeat_fraction and rng.random() < repeat_fraction:
                _, text, _ = sample_training_text(rng)
                question, answer = REPEAT, text
            else:
                text, question, answer = sample_text_question(rng)
            images.append([]), questions.append(f"{text} {TEXT_SEPARATOR} {question}"), answers.append(answer)
            continue
        if rng.random() < caption_fraction:
            scene, text = sample_caption(rng)
            question, answer = DESCRIBE, text
        else:
            scene, question, answer = sample_question(rng)
        images.append([pixels_of([scene])[0]]), questions.append(question), answers.append(answer)
    return images, questions, answers


def detokenize(text: str) -> str:
    """The word tokenizer decodes with a space before punctuation ("circle , outline style"); captions have none."""
    return text.replace(" ,", ",")


def answer_loss(mllm: FrozenMLLM, images: ImageList, questions: list[str], answers: list[str]) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens and the end token, given each sample's images + question.

    The processor left-pads, so every sample's answer (plus end token) occupies its last positions.
    """
    eos = mllm.tokenizer.eos_token
    texts = [f"{q} {a}{eos}" for q, a in zip(questions, answers)]
    inputs = mllm.tokenize(texts, images)
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    for i, answer in enumerate(answers):
        n = len(mllm.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
        labels[i, -n:] = ids[i, -n:]
    return mllm.model(**inputs, labels=labels).loss


@torch.no_grad()
def relation_text_answers(mllm: FrozenMLLM) -> dict[str, float]:
    """The share of the questions about every training (``..._train``) and every held-out (``..._heldout``)
    position string, given as text, that is answered right: the four :func:`relation_text_question` s
    (``relation_text_...``) and the two :func:`relation_which_question` s (``relation_which_...``)."""
    accuracy = {}
    for split, table in (("train", TRAIN_PROMPTS), ("heldout", HELDOUT_PROMPTS)):
        for kind, asked in (("text", [(text, *relation_text_question(text, word, order)) for text in table["position"] for word in (False, True) for order in (False, True)]),
                            ("which", [(text, *relation_which_question(text, word)) for text in table["position"] for word in (False, True)])):
            replies = mllm.describe(None, [f"{text} {TEXT_SEPARATOR} {question}" for text, question, _ in asked], max_new_tokens=4)
            accuracy[f"relation_{kind}_{split}"] = float(np.mean([r == a for r, (_, _, a) in zip(replies, asked)]))
    return accuracy


@torch.no_grad()
def evaluate_mllm(mllm: FrozenMLLM, n: int = 300, seed: int = EVAL_SEED, batch: int = 50) -> dict[str, float]:
    """Caption exact match and question accuracy (overall and per kind) on scenes never trained on, the
    accuracy of questions about a text with no image (``text_question_accuracy``, on ``n`` more examples), and
    the share of grounding answers whose box is within the edit tolerance of the truth (``grounding_within_2px``,
    ``n`` more scenes; 0 for an MLLM without the grounding words), and the accuracy of the relation questions of
    both forms about every training and every held-out position string given as text (:func:`relation_text_answers`:
    ``relation_text_train`` / ``_heldout`` and ``relation_which_train`` / ``_heldout``; the held-out ones say whether
    the MLLM reads a relation it was never asked about)."""
    rng = np.random.default_rng([seed, 7])
    correct: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, n, batch):
        images, questions, answers = sample_examples(rng, min(batch, n - start), caption_fraction=0.5)
        replies = mllm.describe(torch.stack([i[0] for i in images]), questions, max_new_tokens=24)
        for q, a, r in zip(questions, answers, replies):
            kind = "caption" if q == DESCRIBE else parse_question(q).kind
            correct[kind].append(detokenize(r) == a)
    where_rng = np.random.default_rng([seed, 9])
    for start in range(0, n, batch):
        images, questions, answers = sample_examples(where_rng, min(batch, n - start), grounding_fraction=1.0)
        replies = mllm.describe(torch.stack([i[0] for i in images]), questions, max_new_tokens=6)
        for a, r in zip(answers, replies):
            box = parse_box(r)
            correct["where"].append(box is not None and same_place(box, parse_box(a)))
    text_rng = np.random.default_rng([seed, 8])
    for start in range(0, n, batch):
        _, questions, answers = sample_examples(text_rng, min(batch, n - start), text_fraction=1.0)
        correct["text"] += [r == a for r, a in zip(mllm.describe(None, questions, max_new_tokens=4), answers)]
    result = {k: float(np.mean(v)) for k, v in sorted(correct.items())}
    question_hits = [x for k, v in correct.items() if k not in ("caption", "text", "where") for x in v]
    result.update(relation_text_answers(mllm))
    result["question_accuracy"] = float(np.mean(question_hits))
    result["caption_exact_match"] = result.pop("caption")
    result["text_question_accuracy"] = result.pop("text")
    result["grounding_within_2px"] = result.pop("where")
    result["n"] = n
    return result


def extend_vocabulary(mllm: FrozenMLLM, words: Sequence[str]) -> list[int]:
    """Append the ``words`` its word tokenizer lacks to a ShapesWorld MLLM's vocabulary, every existing token keeping
    its id, and grow the input embeddings and the output head to match (new rows: transformers' mean-resizing);
    returns the new tokens' ids (none when nothing was missing)."""
    vocab = mllm.tokenizer.get_vocab()
    new = [w for w in dict.fromkeys(words) if w not in vocab]
    if not new:
        return []
    old = sorted(vocab, key=vocab.get)
    tokenizer = build_word_tokenizer([w for w in old if w not in SPECIAL_TOKENS] + new)
    if any(tokenizer.convert_tokens_to_ids(w) != i for w, i in vocab.items()):
        raise HieraQueryError("this MLLM's tokenizer is not a ShapesWorld word tokenizer (special tokens first, then words); its vocabulary cannot be extended in place")
    mllm.processor.tokenizer = mllm.tokenizer = tokenizer
    mllm.model.resize_token_embeddings(len(tokenizer))
    return [tokenizer.convert_tokens_to_ids(w) for w in new]


def vision_side_parameters(mllm: FrozenMLLM, new_ids: Sequence[int]) -> list[nn.Parameter]:
    """What ``--train vision`` updates: the vision tower with its merger, and the rows of the input embeddings and
    the output head that belong to ``new_ids`` (a gradient hook zeroes the other rows). The language model is
    untouched, so a text-only prompt's hidden states, and with them every text-to-image condition (Eq. 4), stay
    exactly as they were: a checkpoint trained on the old MLLM keeps its text-to-image behaviour."""
    rows = torch.zeros(mllm.model.get_input_embeddings().weight.shape[0], 1)
    rows[list(new_ids)] = 1.0
    tables = [mllm.model.get_input_embeddings().weight, mllm.model.get_output_embeddings().weight]
    if not new_ids:
        return list(mllm.model.model.visual.parameters())
    for table in tables:
        table.requires_grad_(True)
        table.register_hook(lambda grad: grad * rows.to(grad))
    return [*mllm.model.model.visual.parameters(), *tables]


class LatentReadout(nn.Module):
    """An auxiliary head of the vision-tower pretraining, discarded afterwards: each image token's feature -> its
    patch of the frozen ShapesWorld autoencoder's latents (a 4x4 token grid -> 16x16 latents: 4x4 latents per token).

    Trained jointly with the tower (``--reconstruction-weight``), it makes the features hold the whole image, where
    every object is to the pixel, which the questions never ask for and which in-place reconstruction and editing
    need (docs/demo-and-ablations.md section 1); unified models' vision tokenizers are trained with a
    reconstruction term next to understanding for the same reason."""

    def __init__(self, dim: int, channels: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, patch * patch * channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, h, w, D] -> latents [B, C, h * patch, w * patch]."""
        return rearrange(self.net(features), "b h w (p q c) -> b c (h p) (w q)", p=self.patch, q=self.patch)


def reconstruction_loss(mllm: FrozenMLLM, codec: LatentCodec, readout: LatentReadout, pixels: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the readout of the vision features against the autoencoder's latents of ``pixels``."""
    return torch.nn.functional.mse_loss(readout(mllm.vision_features(pixels, grad=True)), codec.encode(pixels * 2 - 1))


def pretrain(mllm: FrozenMLLM, steps: int, batch: int = 32, lr: float = 2e-3, seed: int = TRAIN_SEED, log_every: int = 50,
             checkpoint_every: int = 0, out: Path | None = None, text_fraction: float = 0.0, repeat_fraction: float = 0.0, freeze_embeddings: bool = False,
             grounding_fraction: float = 0.0, vision_only: bool = False, reconstruction_weight: float = 0.0, codec: LatentCodec | None = None,
             relation_fraction: float = 0.0, relation_colours: float = 0.0, relation_kind: str = "yes_no") -> list[float]:
    """AdamW with warm-up and cosine decay on freshly sampled ShapesWorld examples (a ``text_fraction`` of
    them about a text with no image, ``repeat_fraction`` of those asking for it back, a ``grounding_fraction``
    grounding questions, a ``relation_fraction`` relation questions of ``relation_kind`` about a position prompt,
    ``relation_colours`` of those prompts coloured, :func:`sample_examples`);
    returns the loss curve.

    ``freeze_embeddings`` keeps the input word embeddings at their initial values (nearly orthogonal random
    vectors), so the words' identities reach the layers intact however little the pretraining tasks reward
    telling them apart (docs/demo-and-ablations.md section 1: trained, the three shape words drift together).
    With grounding questions the vocabulary first gains :data:`GROUNDING_WORDS` (:func:`extend_vocabulary`).
    ``vision_only`` trains only :func:`vision_side_parameters`, without weight decay (which would move the frozen
    rows). ``reconstruction_weight`` adds that times :func:`reconstruction_loss` on a batch of fresh scenes, through
    a :class:`LatentReadout` into ``codec`` (the frozen autoencoder), trained alongside and then dropped."""
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 3])
    new_ids = extend_vocabulary(mllm, GROUNDING_WORDS) if grounding_fraction else []
    embeddings = mllm.model.get_input_embeddings().weight
    if vision_only:
        params = vision_side_parameters(mllm, new_ids)
    else:
        params = [p for p in mllm.model.parameters() if not (freeze_embeddings and p is embeddings)]
    readout = None
    if reconstruction_weight:
        if codec is None:
            raise HieraQueryError("reconstruction_weight needs the frozen autoencoder (codec) whose latents the vision features are read into")
        grid = mllm.vision_features(torch.zeros(1, 3, spec.CANVAS, spec.CANVAS)).shape
        readout = LatentReadout(grid[-1], codec.channels, spec.CANVAS // codec.downsample // grid[1])
        params = [*params, *readout.parameters()]
    for p in params:
        p.requires_grad_(True)
    mllm.model.train()

    def batch_loss(step: int) -> tuple[torch.Tensor, str]:
        images, questions, answers = sample_examples(rng, batch, text_fraction=text_fraction, repeat_fraction=repeat_fraction,
                                                     grounding_fraction=grounding_fraction, relation_fraction=relation_fraction,
                                                     relation_colours=relation_colours, relation_kind=relation_kind)
        loss = answer_loss(mllm, images, questions, answers)
        if readout is None:
            return loss, ""
        recon = reconstruction_loss(mllm, codec, readout, pixels_of([random_scene(rng, outline_prob=0.5) for _ in range(batch)]))
        return loss + reconstruction_weight * recon, f" (reconstruction {recon.item():.4f})"

    def checkpoint(done: int) -> None:
        if out is not None and checkpoint_every and done % checkpoint_every == 0:
            save_mllm(mllm, out)
            mllm.model.train()

    losses = pretrain_loop(params, steps, lr, batch_loss, weight_decay=0.0 if vision_only else 0.01, betas=(0.9, 0.98), log_every=log_every, after_step=checkpoint)
    for p in params:
        p.requires_grad_(False)
    mllm.model.eval()
    return losses


def save_mllm(mllm: FrozenMLLM, out: Path) -> None:
    """A Hugging Face folder (safetensors weights + processor with the word tokenizer), written atomically."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    mllm.model.save_pretrained(tmp, safe_serialization=True)
    mllm.processor.save_pretrained(tmp)
    replace_directory(tmp, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--patch", type=int, default=8, help="vision patch size in pixels; after the 2x2 merge a 64x64 image is a 4x4 grid of image tokens at 8, 8x8 at 4 (default %(default)s)")
    parser.add_argument("--text-fraction", type=float, default=0.0, help="share of examples that are questions about a prompt or caption with no image (default %(default)s)")
    parser.add_argument("--repeat-fraction", type=float, default=0.0, help="share of the text-only examples that ask for the text back (\"... . describe it\") (default %(default)s)")
    parser.add_argument("--freeze-embeddings", action="store_true", help="keep the input word embeddings at their initialisation (the words stay apart)")
    parser.add_argument("--grounding-fraction", type=float, default=0.0, help="share of examples that are grounding questions (\"where is the red circle\" -> its box in pixels); adds their words to the vocabulary (default %(default)s)")
    parser.add_argument("--relation-fraction", type=float, default=0.0,
                        help="share of examples that ask which way a position prompt's relation points, the prompt given as text (\"a circle above a square . "
                             "is the square below the circle\" -> yes) (default %(default)s)")
    parser.add_argument("--relation-colours", type=float, default=0.0,
                        help="share of those prompts that name a colour for each object (\"a red circle above a blue square\"; default %(default)s)")
    parser.add_argument("--relation-kind", choices=RELATION_KINDS, default="yes_no",
                        help="the relation questions' form: 'yes_no' (\"is the square below the circle\" -> yes) or 'which' (\"what is below\" -> square) (default %(default)s)")
    parser.add_argument("--train", choices=("all", "vision"), default="all", help="'vision': only the vision tower and the new words' rows; the language model stays as it was, so checkpoints trained on the --resume MLLM keep their text-to-image conditions (default %(default)s)")
    parser.add_argument("--reconstruction-weight", type=float, default=0.0, help="weight of the vision features' reconstruction of the autoencoder's latents (LatentReadout, dropped afterwards) (default %(default)s)")
    parser.add_argument("--vae", type=Path, default=VAE_DIR, help="the frozen autoencoder for --reconstruction-weight (default: the bundled ShapesWorld VAE)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-n", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    parser.add_argument("--resume", type=Path, help="continue from this saved MLLM folder instead of a random init")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = BackboneSpec("qwen2_5_vl", path=str(args.resume)) if args.resume else shapesworld_mllm_spec(width=args.width, layers=args.layers, patch=args.patch)
    mllm = build_mllm(spec)
    pretrain(mllm, args.steps, batch=args.batch, lr=args.lr, seed=args.seed, checkpoint_every=500, out=args.out, text_fraction=args.text_fraction,
             repeat_fraction=args.repeat_fraction, freeze_embeddings=args.freeze_embeddings, grounding_fraction=args.grounding_fraction,
             vision_only=args.train == "vision", reconstruction_weight=args.reconstruction_weight, relation_fraction=args.relation_fraction,
             relation_colours=args.relation_colours, relation_kind=args.relation_kind,
             codec=build_codec(BackboneSpec("autoencoder_kl", path=str(args.vae))) if args.reconstruction_weight else None)
    save_mllm(mllm, args.out)
    scores = evaluate_mllm(mllm, n=args.eval_n)
    (args.out / "understanding_scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores, indent=2), flush=True)


if __name__ == "__main__":
    main()
