"""Capture and restore this process's random number generators.

The captured form holds only tensors, lists, numbers and strings, so checkpoints that
contain it load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch

__all__ = ["capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """Returns the states of torch (CPU and CUDA), numpy (if imported) and ``random``.

    Example:
        >>> s = capture_rng(); a = torch.rand(1); restore_rng(s); torch.equal(a, torch.rand(1))
        True
    """
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restores what :func:`capture_rng` returned (CUDA only if available here)."""
    if not isinstance(state, dict) or "torch" not in state:
        raise ValueError(f"Expected an RNG state from capture_rng(), got {type(state).__name__}")
    torch.set_rng_state(state["torch"])
    py = state.get("python")
    if py is not None:
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npst = state.get("numpy")
    if npst is not None:
        import numpy as np

        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
        )
