"""Multi-process tests, one sub-folder per package of ``distengine``.

The test modules live in ``tests/distributed/<package>/`` and import the shared launch
helpers with ``from helpers import ...``: this folder goes on ``sys.path`` (pytest's default
"prepend" import mode adds a conftest's folder too; done here explicitly so the helpers
import whatever the import mode, and for ranks that ``idist.spawn`` starts, which inherit
the test process's ``sys.path``).
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
