"""HieraQuery: multi-scale learnable queries through a frozen MLLM condition a shared DiT, coarse to fine.

Where each part of the paper lives:

- Eq. 1-3 (multi-scale queries, START/END, grid encoding): :mod:`hieraquery_core.queries`
- Eq. 4 (frozen MLLM, H = f(Z_input)):                      :mod:`hieraquery_core.mllm`
- Eq. 4-5 (connector g):                                    :mod:`hieraquery_core.connector`
- Eq. 5 (shared DiT, one resolution per scale):             :mod:`hieraquery_core.dit`
- Section 3.2 (multi-scale representation alignment):       :mod:`hieraquery_core.alignment`
- Training objective (flow matching, summed over scales):   :mod:`hieraquery_core.flow_matching`, :mod:`hieraquery_core.model`
- Sampling (cascade, refinement, guidance):                 :mod:`hieraquery_core.pipeline`
- Checkpoints (safetensors folders):                        :mod:`hieraquery_core.checkpoint`

The package imports nothing heavy at the top level, so ``hieraquery_core.shapesworld`` stays cheap.
"""

__version__ = "0.1.0"
