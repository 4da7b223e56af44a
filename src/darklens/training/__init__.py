"""Pieces of the training loop behind :func:`darklens.train.train`.

``data`` (batches on the device, D4 augmentation, validation split, leakage check), ``loop``
(one epoch, EMA, schedule, per-epoch metrics), ``state`` (resumable run state, metrics.csv) and
``distributed`` (DDP under torchrun).
"""
