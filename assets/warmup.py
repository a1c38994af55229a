"""Import the slow statistics libraries in a background thread during the ingest.

The marts import scipy, statsmodels and lifelines (and the QI report kaleido)
lazily, because a notebook or a test that never fits a model should not pay
for them. In a full run each of those imports (about 4 s together on one
core) would sit on the critical path of a later step, while the ingest before
them spends most of its time in DuckDB and Arrow, which release the GIL.
Importing them beside the ingest moves that time off the critical path
(docs/decisions/008-scale.md). Nothing depends on the warm-up finishing: a
step that needs a module while it is still importing waits on Python's import
lock, and an import error is left for the real import to raise and report.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading

log = logging.getLogger(__name__)

SLOW_IMPORTS = ("scipy.stats", "statsmodels.api", "lifelines", "kaleido")


def warm_imports(modules: tuple[str, ...] = SLOW_IMPORTS) -> threading.Thread | None:
    """Start importing those of ``modules`` not imported yet; the thread, or None.

    Not a daemon: a process that ends early waits for the imports rather than
    tearing down the interpreter under a half-imported C extension.
    """
    pending = [name for name in modules if name not in sys.modules]
    if not pending:
        return None

    def work() -> None:
        for name in pending:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 (the real import reports it)
                log.debug("warm-up import of %s failed: %s", name, exc)

    thread = threading.Thread(target=work, name="import-warmup")
    thread.start()
    return thread
