"""Ignite's ``contrib.engines.common``: a trainer's usual handlers in one call.

- :func:`setup_common_training_handlers`: NaN guard, learning-rate scheduling, periodic
  checkpoints, running averages of the step's outputs and progress bars;
- :func:`gen_save_best_models_by_val_score` / :func:`save_best_model_by_val_score`: keep
  the best models by an evaluator's metric;
- :func:`add_early_stopping_by_val_score`: stop when an evaluator's metric stops improving;
- :func:`setup_tb_logging` (from :mod:`distengine.handlers.logger_utils`): TensorBoard
  logging of the trainer, its optimizers and evaluators.

Everything here is rank-aware as distengine's handlers are: call these helpers **on every
rank** (a :class:`~distengine.handlers.Checkpoint` is a collective); progress bars and
loggers draw and write from the main process only, metrics are reduced over ranks.

Example:
    >>> from distengine.contrib.engines import common
    >>> scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    >>> common.setup_common_training_handlers(
    ...     trainer, to_save={"model": model, "optimizer": optimizer, "trainer": trainer},
    ...     output_path="runs/exp1", save_every_iters=2, lr_scheduler=scheduler,
    ...     output_names=["loss"], with_pbars=False)
    >>> trainer.run(loader, max_epochs=2).metrics["loss"] > 0  # a running average
    True
"""

from __future__ import annotations

import gc
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler as TorchLRScheduler
from torch.utils.data.distributed import DistributedSampler

import distengine.distributed as idist
from distengine.engine import Engine, Events
from distengine.handlers.base_logger import global_step_from_engine
from distengine.handlers.checkpoint import BaseSaveHandler, Checkpoint
from distengine.handlers.disk_saver import DiskSaver
from distengine.handlers.early_stopping import EarlyStopping
from distengine.handlers.logger_utils import setup_logging, setup_tb_logging
from distengine.handlers.progress import ProgressBar
from distengine.handlers.terminate_on_nan import TerminateOnNan
from distengine.metrics import RunningAverage, RunningBatchWise

__all__ = [
    "add_early_stopping_by_val_score",
    "empty_cuda_cache",
    "gen_save_best_models_by_val_score",
    "get_default_score_fn",
    "save_best_model_by_val_score",
    "setup_common_distrib_training_handlers",
    "setup_common_training_handlers",
    "setup_logging",
    "setup_tb_logging",
]

get_default_score_fn = Checkpoint.get_default_score_fn
"""``get_default_score_fn(metric_name, score_sign=1.0)``: ``engine -> score_sign * metrics[metric_name]``."""


def empty_cuda_cache(_: Engine) -> None:
    """Releases cached CUDA memory and collects garbage (an ``EPOCH_COMPLETED`` handler)."""
    torch.cuda.empty_cache()
    gc.collect()


def _named_output(output: Any, index: int, name: str) -> Any:
    """The value named ``name`` (a mapping) or at ``index`` (a sequence) of a step's output."""
    if isinstance(output, Mapping):
        if name not in output:
            raise KeyError(
                f"output_names has {name!r}, but the trainer's output has keys {list(output)}"
            )
        return output[name]
    if isinstance(output, Sequence) and not isinstance(output, str | bytes):
        if index >= len(output):
            raise IndexError(
                f"output_names has {index + 1} or more names, but the trainer's output holds "
                f"{len(output)} values"
            )
        return output[index]
    if isinstance(output, torch.Tensor | numbers.Number):
        return output
    raise TypeError(
        "The trainer's output should be a mapping, a sequence, a tensor or a number to be "
        f"named by output_names, got {type(output).__name__}"
    )


def _drives_sampler(engine: Engine, sampler: Any) -> bool:
    """Whether ``sampler`` belongs to the data ``engine`` runs on (the engine sets its epoch)."""
    data = engine.state.dataloader
    for owner in (data, getattr(data, "batch_sampler", None)):
        if owner is not None and getattr(owner, "sampler", None) is sampler:
            return True
    return False


def _check_train_sampler(trainer: Engine, train_sampler: Any) -> None:
    if train_sampler is None:
        return
    if idist.get_world_size() == 1:
        if isinstance(train_sampler, DistributedSampler):
            warnings.warn(
                "train_sampler is a DistributedSampler but the world size is 1: it is ignored",
                UserWarning,
                stacklevel=3,
            )
        return
    if not callable(getattr(train_sampler, "set_epoch", None)):
        raise TypeError(
            "train_sampler should be a distributed sampler with a set_epoch method (the "
            "sampler of a loader from idist.auto_dataloader, or torch's DistributedSampler), "
            f"got {type(train_sampler).__name__}"
        )

    @trainer.on(Events.EPOCH_STARTED)
    def set_sampler_epoch(engine: Engine) -> None:
        # The engine itself sets the epoch (its data pass) of the sampler of the data it
        # runs on, before the pass starts; any other sampler gets Ignite's call.
        if not _drives_sampler(engine, train_sampler):
            train_sampler.set_epoch(engine.state.epoch - 1)


def setup_common_training_handlers(
    trainer: Engine,
    train_sampler: Any = None,
    to_save: Mapping[str, Any] | None = None,
    save_every_iters: int = 1000,
    output_path: str | os.PathLike | None = None,
    lr_scheduler: Any = None,
    with_gpu_stats: bool = False,
    output_names: Iterable[str] | None = None,
    with_pbars: bool = True,
    with_pbar_on_iters: bool = True,
    log_every_iters: int = 100,
    stop_on_nan: bool = True,
    clear_cuda_cache: bool = True,
    save_handler: Callable | BaseSaveHandler | None = None,
    **kwargs: Any,
) -> None:
    """Attaches a trainer's usual handlers, on one process or many.

    In this order:

    - a :class:`~distengine.metrics.RunningAverage` (``usage=RunningBatchWise()``) of
      each value of the step's output named in ``output_names`` (a dict's key, a
      sequence's position, or the output itself when it is a number or a 0-d tensor),
      stored in ``trainer.state.metrics[name]``;
    - :class:`~distengine.handlers.TerminateOnNan` on ``ITERATION_COMPLETED``
      (``stop_on_nan``): a NaN on any rank stops every rank after the same iteration;
    - ``lr_scheduler``: a torch ``LRScheduler`` is stepped on ``ITERATION_COMPLETED``, a
      distengine parameter scheduler is called on ``ITERATION_STARTED``;
    - ``torch.cuda.empty_cache()`` at every ``EPOCH_COMPLETED`` (``clear_cuda_cache``,
      with CUDA only);
    - a :class:`~distengine.handlers.Checkpoint` of ``to_save`` with
      ``filename_prefix="training"`` every ``save_every_iters`` iterations, into
      ``output_path`` (a :class:`~distengine.handlers.DiskSaver`) or ``save_handler``;
      ``kwargs`` go to ``Checkpoint`` (e.g. ``n_saved``). The running averages come
      first so that a checkpoint holds the iteration's update, and a resumed run continues
      them exactly;
    - two :class:`~distengine.handlers.ProgressBar` (``with_pbars``): one over the
      iterations of an epoch showing every metric, redrawn every ``log_every_iters``
      iterations (``with_pbar_on_iters``), and one over the epochs.

    Call it on every rank: the checkpoint is a collective, progress bars draw on the main
    process only. ``train_sampler`` is accepted for Ignite's scripts: the engine already
    sets the epoch of the sampler of the data it runs on (``set_epoch(data pass)``), so it
    is only checked (at world size > 1 it must have ``set_epoch``); a sampler of another
    loader gets ``set_epoch(epoch - 1)`` at each ``EPOCH_STARTED``, as in Ignite.

    Args:
        trainer: the training engine.
        train_sampler: the training loader's distributed sampler (see above).
        to_save: objects to checkpoint (``Checkpoint``'s ``to_save``).
        save_every_iters: checkpoint interval in iterations.
        output_path: checkpoint directory (exclusive with ``save_handler``).
        lr_scheduler: a torch ``LRScheduler`` or a distengine parameter scheduler.
        with_gpu_stats: Ignite's ``GpuInfo`` metric, which distengine does not provide:
            ``True`` raises ``ValueError``.
        output_names: names of the step's output values to average.
        with_pbars: attach the progress bars.
        with_pbar_on_iters: also the bar over iterations.
        log_every_iters: redraw interval of the bar over iterations.
        stop_on_nan: attach ``TerminateOnNan``.
        clear_cuda_cache: empty the CUDA cache after every epoch.
        save_handler: where checkpoints go (exclusive with ``output_path``).
        **kwargs: more ``Checkpoint`` arguments.

    Raises:
        ValueError: both or neither of ``output_path`` and ``save_handler`` with
            ``to_save``; ``with_gpu_stats=True``; ``save_every_iters`` or
            ``log_every_iters`` not a positive int.
        TypeError: ``trainer`` not an Engine, ``output_names`` not names,
            ``lr_scheduler`` neither a torch ``LRScheduler`` nor callable, or (at world
            size > 1) a ``train_sampler`` without ``set_epoch``.

    Example:
        >>> lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        >>> setup_common_training_handlers(
        ...     trainer, train_sampler=loader.sampler,
        ...     to_save={"trainer": trainer, "model": model, "optimizer": optimizer},
        ...     save_every_iters=2, output_path="ckpt", lr_scheduler=lr_scheduler,
        ...     output_names=["batch loss"], with_pbars=False)
        >>> state = trainer.run(loader, max_epochs=1)
        >>> sorted(state.metrics), optimizer.param_groups[0]["lr"]
        (['batch loss'], 0.025)
        >>> import os
        >>> sorted(os.listdir("ckpt"))  # doctest: +ELLIPSIS
        [...'training_checkpoint_4.pt'...]
    """
    if not isinstance(trainer, Engine):
        raise TypeError(f"trainer should be an Engine, got {type(trainer).__name__}")
    if output_path is not None and save_handler is not None:
        raise ValueError(
            "Arguments output_path and save_handler are mutually exclusive: give only one"
        )
    for name, value in (
        ("save_every_iters", save_every_iters),
        ("log_every_iters", log_every_iters),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} should be a positive int, got {value!r}")
    if with_gpu_stats:
        raise ValueError(
            "with_gpu_stats=True attaches Ignite's GpuInfo metric, which distengine does not "
            "provide; use with_gpu_stats=False (see the README's 'Coming from Ignite')"
        )
    if lr_scheduler is not None and not (
        isinstance(lr_scheduler, TorchLRScheduler) or callable(lr_scheduler)
    ):
        raise TypeError(
            "lr_scheduler should be a torch LRScheduler or a distengine parameter scheduler, "
            f"got {type(lr_scheduler).__name__}"
        )
    names: list[str] | None = None
    if output_names is not None:
        if isinstance(output_names, str):
            raise TypeError(f"output_names should be a list of names, got the str {output_names!r}")
        names = list(output_names)
        if not all(isinstance(n, str) for n in names):
            raise TypeError(f"output_names should be a list of str, got {names!r}")
    if to_save is not None and output_path is None and save_handler is None:
        raise ValueError(
            "to_save is given: give output_path or save_handler too, to say where checkpoints go"
        )
    if to_save is None and kwargs:
        warnings.warn(
            f"{sorted(kwargs)} are Checkpoint arguments, but to_save is None: no checkpoint "
            "is made and they are ignored",
            UserWarning,
            stacklevel=2,
        )
    _check_train_sampler(trainer, train_sampler)

    for index, name in enumerate(names or ()):
        average = RunningAverage(output_transform=partial(_named_output, index=index, name=name))
        average.attach(trainer, name, usage=RunningBatchWise())

    if stop_on_nan:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())

    if lr_scheduler is not None:
        if isinstance(lr_scheduler, TorchLRScheduler):
            trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: lr_scheduler.step())
        else:
            trainer.add_event_handler(Events.ITERATION_STARTED, lr_scheduler)

    if clear_cuda_cache and torch.cuda.is_available():
        trainer.add_event_handler(Events.EPOCH_COMPLETED, empty_cuda_cache)

    if to_save is not None:
        if output_path is not None:
            save_handler = DiskSaver(output_path, require_empty=False)
        checkpoint = Checkpoint(to_save, save_handler, filename_prefix="training", **kwargs)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=save_every_iters), checkpoint)

    if with_pbars:
        if with_pbar_on_iters:
            ProgressBar(persist=False).attach(
                trainer,
                metric_names="all",
                event_name=Events.ITERATION_COMPLETED(every=log_every_iters),
            )
        ProgressBar(persist=True, bar_format="").attach(
            trainer, event_name=Events.EPOCH_STARTED, closing_event_name=Events.COMPLETED
        )


setup_common_distrib_training_handlers = setup_common_training_handlers
"""Ignite's name for the same helper (it is rank-aware at any world size)."""


def gen_save_best_models_by_val_score(
    save_handler: Callable | BaseSaveHandler | str | os.PathLike,
    evaluator: Engine,
    models: torch.nn.Module | Mapping[str, Any],
    metric_name: str,
    n_saved: int = 3,
    trainer: Engine | None = None,
    tag: str = "val",
    score_sign: float = 1.0,
    **kwargs: Any,
) -> Checkpoint:
    """Keeps the ``n_saved`` best models by ``evaluator.state.metrics[metric_name]``.

    A :class:`~distengine.handlers.Checkpoint` with ``filename_prefix="best"`` and
    ``score_name=f"{tag}_{metric_name.lower()}"`` is added to ``evaluator`` on
    ``COMPLETED``; the highest ``score_sign * metric`` are kept (``score_sign=-1.0`` for
    a loss). With ``trainer``, file names carry the trainer's epoch. Call it on every
    rank: the metric is reduced over ranks, so every rank agrees on the score, and the
    checkpoint is a collective.

    Args:
        save_handler: where checkpoints go (a ``DiskSaver``, a directory, any save handler).
        evaluator: the engine whose metric scores the models.
        models: a model (saved as ``"model"``) or ``{name: object}``.
        metric_name: the metric's name in ``evaluator.state.metrics``.
        n_saved: how many to keep.
        trainer: gives the step in file names (its epoch).
        tag: prefix of the score name.
        score_sign: 1.0 (higher is better) or -1.0 (lower is better).
        **kwargs: more ``Checkpoint`` arguments.

    Returns:
        The attached ``Checkpoint``.

    Raises:
        TypeError: ``models`` neither a module nor a mapping, ``metric_name`` not a str.
        ValueError: ``score_sign`` not 1.0 or -1.0.

    Example:
        >>> from distengine.metrics import Accuracy
        >>> Accuracy().attach(evaluator, "accuracy")
        >>> @trainer.on(Events.EPOCH_COMPLETED)
        ... def validate():
        ...     evaluator.run(loader)
        >>> best = gen_save_best_models_by_val_score(DiskSaver("ckpt", require_empty=False),
        ...                                          evaluator, model, "accuracy", trainer=trainer)
        >>> state = trainer.run(loader, max_epochs=3)
        >>> best.last_checkpoint.name  # doctest: +ELLIPSIS
        'best_model_..._val_accuracy=0....pt'
    """
    if not isinstance(evaluator, Engine):
        raise TypeError(f"evaluator should be an Engine, got {type(evaluator).__name__}")
    if not isinstance(metric_name, str):
        raise TypeError(f"metric_name should be a str, got {type(metric_name).__name__}")
    if isinstance(models, torch.nn.Module):
        to_save: Mapping[str, Any] = {"model": models}
    elif isinstance(models, Mapping):
        to_save = models
    else:
        raise TypeError(
            f"models should be a torch.nn.Module or a dict of objects, got {type(models).__name__}"
        )
    handler = Checkpoint(
        to_save,
        save_handler,
        filename_prefix="best",
        n_saved=n_saved,
        global_step_transform=None if trainer is None else global_step_from_engine(trainer),
        score_name=f"{tag}_{metric_name.lower()}",
        score_function=get_default_score_fn(metric_name, score_sign=score_sign),
        **kwargs,
    )
    evaluator.add_event_handler(Events.COMPLETED, handler)
    return handler


def save_best_model_by_val_score(
    output_path: str | os.PathLike,
    evaluator: Engine,
    model: torch.nn.Module,
    metric_name: str,
    n_saved: int = 3,
    trainer: Engine | None = None,
    tag: str = "val",
    score_sign: float = 1.0,
    **kwargs: Any,
) -> Checkpoint:
    """Saves the best models by validation score into the directory ``output_path``.

    :func:`gen_save_best_models_by_val_score` with a :class:`DiskSaver` there.

    Example:
        >>> from distengine.metrics import Accuracy
        >>> Accuracy().attach(evaluator, "accuracy")
        >>> best = save_best_model_by_val_score("ckpt", evaluator, model, "accuracy",
        ...                                     n_saved=2, trainer=trainer)
    """
    return gen_save_best_models_by_val_score(
        DiskSaver(output_path, require_empty=False),
        evaluator,
        model,
        metric_name,
        n_saved=n_saved,
        trainer=trainer,
        tag=tag,
        score_sign=score_sign,
        **kwargs,
    )


def add_early_stopping_by_val_score(
    patience: int,
    evaluator: Engine,
    trainer: Engine,
    metric_name: str,
    score_sign: float = 1.0,
) -> EarlyStopping:
    """Stops ``trainer`` when ``score_sign * evaluator.state.metrics[metric_name]`` has
    not improved for ``patience`` evaluations.

    An :class:`~distengine.handlers.EarlyStopping` is added to ``evaluator`` on
    ``COMPLETED``. Every rank sees the same reduced metric, so every rank stops after the
    same epoch; put the returned handler in the checkpoint's ``to_save`` to resume its
    count.

    Args:
        patience: evaluations without improvement before stopping.
        evaluator: the engine whose metric is watched.
        trainer: the engine to stop.
        metric_name: the metric's name in ``evaluator.state.metrics``.
        score_sign: 1.0 (higher is better) or -1.0 (lower is better).

    Returns:
        The attached ``EarlyStopping``.

    Example:
        >>> from distengine.metrics import Loss
        >>> Loss(torch.nn.functional.cross_entropy).attach(evaluator, "nll")
        >>> es = add_early_stopping_by_val_score(5, evaluator, trainer, "nll", score_sign=-1.0)
    """
    if not isinstance(evaluator, Engine):
        raise TypeError(f"evaluator should be an Engine, got {type(evaluator).__name__}")
    handler = EarlyStopping(
        patience=patience,
        score_function=get_default_score_fn(metric_name, score_sign=score_sign),
        trainer=trainer,
    )
    evaluator.add_event_handler(Events.COMPLETED, handler)
    return handler
