"""The warning of the ``contrib.handlers`` submodules, which moved to ``distengine.handlers``."""

import warnings


def warn_moved(old: str, new: str) -> None:
    """Warns (``DeprecationWarning``, at the importer) that module ``old`` moved to ``new``."""
    warnings.warn(
        f"{old} moved to {new}: import from there ({old} is kept for Ignite's scripts)",
        DeprecationWarning,
        stacklevel=3,
    )
