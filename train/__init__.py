"""HieraQuery training: the paper's three stages (text-to-image, reconstruction, editing) with accelerate.

Entry point: ``python -m train.train`` (see ``train/README.md``); Python API: :mod:`train.train`
(``TrainConfig``, ``Trainer``, ``train``), data: :mod:`train.data`, ShapesWorld data:
:mod:`train.shapesworld_data`, checkpoints without pickle: :mod:`train.state`, optimizer and schedule:
:mod:`train.optim`. Nothing heavy is imported here.
"""
