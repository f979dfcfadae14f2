"""GPU rows at the paper's sizes (section 4.2): ``python -m bench.gpu`` is
``python -m bench.run --device cuda --dtype bfloat16 --sizes real`` (more flags pass through, e.g.
``--sizes medium,real`` or ``--steps 30``). The results go into BENCHMARKS.md's cuda block, next to
the CPU rows.

The real size is a SANA-1.6B-shaped DiT on DC-AE f32c32 latents at 1024 px, a Qwen2.5-0.5B-shaped
connector and a Qwen2.5-VL-3B-shaped MLLM (:func:`bench.configs.real_config`), random weights, built
directly on the GPU: about 5.7B parameters, 11.5 GB in bfloat16; the training rows add gradients and
AdamW state for the 2B trainable parameters and the activations (about 40 GB at batch 2, by estimate).
"""

from __future__ import annotations

import sys

import torch

from . import run


def main(argv: list[str] | None = None) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA GPU (torch.cuda.is_available() is False); on a CPU run `python -m bench.run`")
    argv = sys.argv[1:] if argv is None else list(argv)
    return run.main(["--device", "cuda", "--dtype", "bfloat16", "--sizes", "real", *argv])


if __name__ == "__main__":
    main()
