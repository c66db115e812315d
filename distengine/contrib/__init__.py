"""Ignite's ``contrib`` import paths: ``contrib.engines.common`` and ``contrib.handlers``.

``from distengine.contrib.engines import common`` gives the helpers that attach a
trainer's usual handlers in one call (:func:`~distengine.contrib.engines.common.setup_common_training_handlers`,
best-model checkpoints, early stopping, TensorBoard logging), rank-aware like the rest of
distengine. ``distengine.contrib.handlers`` re-exports the handlers Ignite still offers
there (``ProgressBar``, ``TensorboardLogger``, the parameter schedulers). New code can
import the handlers from :mod:`distengine.handlers` directly.
"""
