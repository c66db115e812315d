"""Multi-process tests, one sub-folder per package of ``distengine``.

The test modules live in ``tests/distributed/<package>/`` and import the shared launch
helpers with ``from helpers import ...``: this folder goes on ``sys.path`` (pytest's default
"prepend" import mode adds a conftest's folder too; done here explicitly so the helpers
import whatever the import mode, and for ranks that ``idist.spawn`` starts, which inherit
the test process's ``sys.path``).
"""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


from proctree import child_context  # noqa: E402

from distengine.distributed import launch  # noqa: E402


@pytest.fixture(autouse=True)
def _ranks_from_the_fork_server(monkeypatch):
    """``idist.spawn``'s ranks start from the tests' fork server (``start_method="forkserver"``,
    one of the start methods ``spawn`` documents), where torch and distengine are already
    imported: a rank then starts in a fraction of a second instead of importing torch again
    (about 3 s of CPU each, most of these tests' cost on 2 cores). The ranks are real
    processes with their own process group, as with ``"spawn"``. A test that passes
    ``start_method=`` itself keeps it; ``Parallel`` keeps its own default.

    One difference is visible to a test: ranks forked from the same server start from the
    same state of torch's, numpy's and ``random``'s global generators, where spawned ones
    are seeded by each new interpreter; tests here seed explicitly where it matters.
    """
    child_context()  # the preload list, set before the server first starts
    monkeypatch.setitem(launch.spawn.__kwdefaults__, "start_method", "forkserver")
