"""PNG/PDF files of plotly figures, rendered by kaleido in a process of their own.

``python -m assets.static_export [KALEIDO_OPTIONS_JSON]`` starts Chromium
(through kaleido) at once, then reads the figures to render from stdin as JSON::

    {"items": [{"fig": {...plotly figure...}, "path": "...", "opts": {...}}, ...]}

writes each file and prints ``{"written": [paths]}``. Empty input (the report
failed before its figures existed) ends it without output.

Why a process and not a thread of the report step: Chromium is started while
the report's tables are still being queried, and kaleido's event loop, which
wakes for every message from the browser, does not wait for the GIL behind the
Python that writes the caseload pages meanwhile (in a thread, that stretched a
9 s export to 13 s at 200k episodes; docs/decisions/008-scale.md).
``assets.reports.StaticExport`` runs it and turns its errors into log lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def kaleido_class(reload_between_figures: bool = False) -> type:
    """kaleido's ``Kaleido``, by default without reloading its page after every figure.

    kaleido 1.x reloads the tab (plotly.js, 4.6 MB, parsed again) after each
    image: ~0.2 s of the ~0.27 s an image takes. Our figures leave nothing
    behind that the next one could see: the 38 PNG and PDF files of the 200k
    service page are byte for byte the same with and without the reloads (PDFs
    but for their dates; tests/test_reports.py compares them on every run in
    CI), made in 3.5 s instead of 10 s. ``_return_kaleido_tab`` is kaleido's
    own (pinned in uv.lock); if a release renames it, the plain class is used.
    """
    import kaleido  # noqa: PLC0415 (only this process needs it)

    if reload_between_figures or "_return_kaleido_tab" not in vars(kaleido.Kaleido):
        return kaleido.Kaleido

    class KeptPage(kaleido.Kaleido):
        async def _return_kaleido_tab(self, tab: Any) -> None:
            await self.tabs_ready.put(tab)

    return KeptPage


async def render(
    read_payload: Any, options: dict[str, Any], reload_between_figures: bool = False
) -> list[str]:
    """Start kaleido with ``options``, then render what ``read_payload()`` (blocking) gives."""
    payload = asyncio.get_running_loop().run_in_executor(None, read_payload)
    async with kaleido_class(reload_between_figures)(**options) as k:
        raw = await payload
        if not raw.strip():
            return []
        items = json.loads(raw)["items"]
        await k.write_fig_from_object(items, cancel_on_error=True)
        return [item["path"] for item in items]


def main(argv: list[str]) -> int:
    options = json.loads(argv[0]) if argv else {}
    written = asyncio.run(render(sys.stdin.buffer.read, options))
    if written:
        sys.stdout.write(json.dumps({"written": written}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
