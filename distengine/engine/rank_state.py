"""Per-rank state of an engine: RNG states and registered providers (e.g. metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distengine.engine.rng import capture_rng, restore_rng

__all__ = ["RankState"]

_KEYS = ("rng", "providers")


class RankState:
    """Collects what differs per rank; a provider has ``rank_state_dict()`` and
    ``load_rank_state_dict(sd)``. States loaded before their provider registers wait for it;
    the RNG state waits until :meth:`apply_rng` (called when ``run`` resumes)."""

    def __init__(self) -> None:
        self.providers: dict[str, Any] = {}
        self._pending: dict[str, Any] = {}
        self._pending_rng: dict | None = None

    def register(self, key: str, obj: Any) -> None:
        self.providers[key] = obj
        pending = self._pending.pop(key, None)
        if pending is not None:
            obj.load_rank_state_dict(pending)

    def unregister(self, key: str) -> None:
        self.providers.pop(key, None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": capture_rng(),
            "providers": {k: p.rank_state_dict() for k, p in self.providers.items()},
        }

    def load(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected a rank state mapping, got {type(state_dict).__name__}")
        missing = [k for k in _KEYS if k not in state_dict]
        if missing:
            raise ValueError(f"Expected a rank state with keys {list(_KEYS)}, missing {missing}")
        self._pending_rng = state_dict["rng"]
        for key, sd in state_dict["providers"].items():
            if key in self.providers:
                self.providers[key].load_rank_state_dict(sd)
            else:
                self._pending[key] = sd

    def apply_rng(self) -> bool:
        """Restores the loaded RNG states, if any; returns whether it did."""
        if self._pending_rng is None:
            return False
        restore_rng(self._pending_rng)
        self._pending_rng = None
        return True
