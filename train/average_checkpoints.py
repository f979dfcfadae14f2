"""Average the weights of checkpoints of one architecture into a new checkpoint folder.

Weight averaging of models fine-tuned from a shared start ("model soups", Wortsman et al., 2022) or of
checkpoints along one run's path (stochastic weight averaging, Izmailov et al., 2018) often scores better
than any one of them. The paper does not use it; it is a project tool (docs/demo-and-ablations.md section 3
records where it was tried). Every trained floating-point tensor (DiT, queries, connector, aligner) is the
weighted mean of the inputs'; the frozen MLLM and autoencoder (section 4.2) must be the same in every input,
since an average of two different frozen backbones is neither. The result is written with
:func:`hieraquery_core.checkpoint.save_checkpoint`, so it is atomic and embeds its backbones like any checkpoint.

    python -m train.average_checkpoints runs/a/edit/final runs/b/edit/final --out runs/soup
    python -m train.average_checkpoints A B --weights 0.25,0.75 --out runs/soup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hieraquery_core.checkpoint import load_checkpoint, save_checkpoint
from hieraquery_core.errors import HieraQueryError, require


FROZEN = {"mllm.": "MLLM", "codec.": "autoencoder"}
"""The state-dict prefixes of the frozen backbones (section 4.2), which must be equal in every input and are never averaged."""


def parse_weights(text: str) -> list[float]:
    """``"0.25,0.75"`` -> [0.25, 0.75] (checked by :func:`check_weights` when averaging)."""
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise HieraQueryError(f"--weights {text!r} is not a comma-separated list of numbers; give one per checkpoint, e.g. 0.5,0.5") from None


def check_weights(weights: list[float], n: int) -> None:
    """One weight per checkpoint of ``n``, each >= 0, summing to 1 (a weighted mean, not a sum)."""
    require(len(weights) == n, f"the weights give {len(weights)} numbers for {n} checkpoints; give one per checkpoint")
    require(all(w >= 0 for w in weights) and abs(sum(weights) - 1.0) < 1e-6,
            f"the weights {','.join(f'{w:g}' for w in weights)} must be >= 0 and sum to 1")


def check_compatible(first: dict[str, torch.Tensor], state: dict[str, torch.Tensor], i: int) -> None:
    """Checkpoint ``i``'s ``state`` has the first one's tensor names and shapes and its frozen backbones, tensor for tensor."""
    require(state.keys() == first.keys() and all(state[k].shape == first[k].shape for k in first),
            f"checkpoint {i} does not have the first one's tensors (names or shapes differ); only checkpoints of one architecture can be averaged")
    differing = sorted({name for prefix, name in FROZEN.items() for k in first if k.startswith(prefix) and not torch.equal(state[k], first[k])})
    require(not differing, f"checkpoint {i} has another frozen {' and '.join(differing)} than the first; average only checkpoints trained on the same frozen backbones")


@torch.no_grad()
def average_checkpoints(folders: list[Path], out: Path, weights: list[float] | None = None) -> Path:
    """Load ``folders``, average them (equal weights unless given) and save the result to ``out``.

    The checkpoints are read one at a time into a running weighted sum of the trained tensors, so at most two
    checkpoints (each embedding its frozen MLLM) are loaded at once, whatever their number."""
    require(len(folders) >= 2, "give at least two checkpoint folders to average")
    require(out.absolute() not in {f.absolute() for f in folders}, f"--out {out} is one of the inputs; write the average to a new folder")
    weights = [1.0 / len(folders)] * len(folders) if weights is None else list(weights)
    check_weights(weights, len(folders))
    model = load_checkpoint(folders[0])
    first = model.state_dict()
    averaged = {k: weights[0] * v for k, v in first.items() if v.is_floating_point() and not k.startswith(tuple(FROZEN))}
    for i, (folder, weight) in enumerate(zip(folders[1:], weights[1:]), start=2):
        state = load_checkpoint(folder).state_dict()
        check_compatible(first, state, i)
        for k, total in averaged.items():
            total.add_(state[k], alpha=weight)
        del state  # before the next one is loaded
    model.load_state_dict({**first, **averaged})
    return save_checkpoint(model, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.average_checkpoints", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders of one architecture")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write the averaged checkpoint to")
    parser.add_argument("--weights", help="comma-separated weights, one per checkpoint, summing to 1 (default: equal)")
    args = parser.parse_args(argv)
    try:
        weights = None if args.weights is None else parse_weights(args.weights)
        out = average_checkpoints(args.checkpoints, args.out, weights)
    except HieraQueryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote the average of {len(args.checkpoints)} checkpoints to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
