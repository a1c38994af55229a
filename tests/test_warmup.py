"""The background import of the marts' slow libraries (assets/warmup.py)."""

from __future__ import annotations

import sys

from assets.warmup import SLOW_IMPORTS, warm_imports


def test_warm_imports_imports_in_a_thread_and_swallows_failures(tmp_path, monkeypatch):
    (tmp_path / "warm_probe.py").write_text(
        "import threading\nTHREAD = threading.current_thread().name\n"
    )
    (tmp_path / "warm_broken.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("warm_probe", "warm_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    thread = warm_imports(("warm_broken", "warm_probe"))
    assert thread is not None and not thread.daemon
    thread.join(timeout=30)
    assert sys.modules["warm_probe"].THREAD == "import-warmup"  # imported, off the caller's thread
    assert "warm_broken" not in sys.modules  # the failure is left for the real import


def test_nothing_to_warm_starts_no_thread():
    assert warm_imports(("json", "os")) is None


def test_the_warm_list_names_what_the_marts_import_lazily():
    from pathlib import Path

    assets = Path(__file__).resolve().parents[1] / "assets"
    sources = "".join(p.read_text() for p in assets.glob("*.py") if p.name != "warmup.py")
    for name in SLOW_IMPORTS:
        top = name.split(".")[0]
        assert f"import {top}" in sources or f"from {top}" in sources, name
