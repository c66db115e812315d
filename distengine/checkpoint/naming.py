"""Checkpoint file names, following Ignite's documented pattern.

``{filename_prefix}_{name}_{global_step}_{score_name}={score}.{ext}``, where parts are
dropped as Ignite drops them: no prefix when it is empty, no global step when there is
neither a ``global_step_transform`` nor a score (then the step is the iteration), no
score without a ``score_function``.
"""

from __future__ import annotations

import numbers

__all__ = ["format_score", "render_filename", "setup_filename_pattern"]


def setup_filename_pattern(
    with_prefix: bool = True,
    with_score: bool = True,
    with_score_name: bool = True,
    with_global_step: bool = True,
) -> str:
    """The default filename pattern with the chosen parts.

    Args:
        with_prefix: starts with ``{filename_prefix}_``.
        with_score: ends with ``_{score}`` (or ``_{score_name}={score}``).
        with_score_name: writes the score as ``{score_name}={score}`` (needs ``with_score``).
        with_global_step: has ``_{global_step}`` after the name.

    Raises:
        ValueError: if neither a score nor a global step is asked for, or a score name
            without a score.

    Example:
        >>> setup_filename_pattern()
        '{filename_prefix}_{name}_{global_step}_{score_name}={score}.{ext}'
        >>> setup_filename_pattern(False, False, False, True)
        '{name}_{global_step}.{ext}'
    """
    if not (with_global_step or with_score):
        raise ValueError(
            f"Expected with_score or with_global_step to be True, got with_score={with_score}, "
            f"with_global_step={with_global_step}"
        )
    if with_score_name and not with_score:
        raise ValueError("Expected with_score=True when with_score_name=True, got with_score=False")
    pattern = "{name}"
    if with_global_step:
        pattern += "_{global_step}"
    if with_score:
        pattern += "_{score_name}={score}" if with_score_name else "_{score}"
    if with_prefix:
        pattern = "{filename_prefix}_" + pattern
    return pattern + ".{ext}"


def format_score(priority: float) -> str:
    """Integers as they are, other numbers with 4 decimals (Ignite's rendering).

    Example:
        >>> format_score(3), format_score(0.912345)
        ('3', '0.9123')
    """
    return f"{priority}" if isinstance(priority, numbers.Integral) else f"{priority:.4f}"


def render_filename(
    pattern: str | None,
    *,
    filename_prefix: str,
    name: str,
    score_name: str | None,
    score: str | None,
    global_step: int | None,
    ext: str = "pt",
) -> str:
    """Renders a filename from ``pattern`` (or the default pattern for the given parts).

    Example:
        >>> render_filename(None, filename_prefix="best", name="model", score_name="acc",
        ...                 score="0.9100", global_step=None)
        'best_model_acc=0.9100.pt'
    """
    if pattern is None:
        pattern = setup_filename_pattern(
            with_prefix=len(filename_prefix) > 0,
            with_score=score is not None,
            with_score_name=score_name is not None,
            with_global_step=global_step is not None,
        )
    return pattern.format(
        filename_prefix=filename_prefix,
        name=name,
        score_name=score_name,
        score=score,
        global_step=global_step,
        ext=ext,
    )
