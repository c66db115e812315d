"""Engine helpers at Ignite's ``contrib.engines`` path: see :mod:`.common`."""

from distengine.contrib.engines import common

__all__ = ["common"]
