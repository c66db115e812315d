"""Checkpoint file names, following Ignite's documented pattern.

``{filename_prefix}_{name}_{global_step}_{score_name}={score}.{ext}``, where parts are
dropped as Ignite drops them: no prefix when it is empty, no global step when there is
neither a ``global_step_transform`` nor a score (then the step is the iteration), no
score without a ``score_function``. Patterns are checked when a handler is built: an
unknown field or a name that is not a plain file name fails there, not at the first save.
"""

from __future__ import annotations

import numbers

from distengine.checkpoint.manifest import check_file_name

__all__ = [
    "FilenamePatternError",
    "check_filename_prefix",
    "check_pattern",
    "format_score",
    "render_filename",
    "setup_filename_pattern",
]

FIELDS = ("filename_prefix", "name", "score_name", "score", "global_step", "ext")


class FilenamePatternError(ValueError, KeyError):
    """A ``filename_pattern`` that cannot render a file name (a ``ValueError``; also a
    ``KeyError`` for an unknown field, as Ignite raises at the first save)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


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
            "At least one of with_score and with_global_step should be True, got "
            f"with_score={with_score}, with_global_step={with_global_step}"
        )
    if with_score_name and not with_score:
        raise ValueError(
            "If with_score_name is True, with_score should be also True, got with_score=False"
        )
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
        >>> format_score(3), format_score(0.912345), format_score(float("nan"))
        ('3', '0.9123', 'nan')
    """
    return f"{priority}" if isinstance(priority, numbers.Integral) else f"{priority:.4f}"


def check_filename_prefix(prefix: object) -> str:
    """Returns ``prefix`` if it can start a file name, else raises.

    Example:
        >>> check_filename_prefix("run/1")
        Traceback (most recent call last):
        ...
        ValueError: filename_prefix must not contain '/', '\\\\' or NUL (it starts a file name in the checkpoint directory), got 'run/1'
    """
    if not isinstance(prefix, str):
        raise TypeError(f"filename_prefix must be a str, got {type(prefix).__name__}")
    if any(c in prefix for c in "/\\\0"):
        raise ValueError(
            "filename_prefix must not contain '/', '\\\\' or NUL (it starts a file name in the "
            f"checkpoint directory), got {prefix!r}"
        )
    return prefix


def check_pattern(
    pattern: object, filename_prefix: str = "p", name: str = "n", ext: str = "pt"
) -> None:
    """Checks that ``pattern`` renders a plain file name for any score and step.

    Raises:
        FilenamePatternError: an unknown field (also a ``KeyError``), a positional field,
            a bad format spec, or a rendered name that is not a plain file name.
        TypeError: ``pattern`` is not a string.

    Example:
        >>> check_pattern("{name}_{epoch}.{ext}")
        Traceback (most recent call last):
        ...
        distengine.checkpoint.naming.FilenamePatternError: filename_pattern '{name}_{epoch}.{ext}' has an unknown field 'epoch'; the fields are filename_prefix, name, score_name, score, global_step, ext
    """
    if not isinstance(pattern, str):
        raise TypeError(f"filename_pattern must be a str, got {type(pattern).__name__}")
    try:
        rendered = pattern.format(
            filename_prefix=filename_prefix or "p",
            name=name,
            score_name="s",
            score="0.5000",
            global_step=1,
            ext=ext,
        )
    except KeyError as e:
        raise FilenamePatternError(
            f"filename_pattern {pattern!r} has an unknown field {e.args[0]!r}; the fields are "
            + ", ".join(FIELDS)
        ) from None
    except (IndexError, ValueError) as e:
        raise FilenamePatternError(
            f"filename_pattern {pattern!r} cannot be rendered ({e}); use named fields such as "
            "{name} and {global_step}"
        ) from None
    try:
        check_file_name(rendered, "a name rendered from filename_pattern")
    except ValueError as e:
        raise FilenamePatternError(
            f"filename_pattern {pattern!r} with filename_prefix {filename_prefix!r} and name "
            f"{name!r} gives bad names: {e}"
        ) from None


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
