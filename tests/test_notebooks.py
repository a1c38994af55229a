"""The analyst notebooks run top to bottom on a warehouse built from a small export.

Each notebook is a jupytext percent script (``notebooks/*.py``, what reviewers read)
paired with an output-stripped ``.ipynb`` (what Jupyter opens). The test builds the
warehouse with the real ``refresh_all`` job, which publishes the snapshot the
notebooks read, then executes every notebook in a fresh kernel with papermill-style
parameters injected after the cell tagged ``parameters``, plus a few cells that check
what it computed. Needs jupytext, nbformat, nbclient and ipykernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext", reason="notebook runner: pip install jupytext")
nbformat = pytest.importorskip("nbformat", reason="notebook runner: pip install nbformat")
nbclient = pytest.importorskip("nbclient", reason="notebook runner: pip install nbclient")
pytest.importorskip("ipykernel", reason="notebook runner: pip install ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["client_trajectory", "cohort_outcomes", "data_quality"]
CELL_TIMEOUT = 300


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run refresh_all on a small generated export; returns the published snapshot."""
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.generate import generate
    from pipelines.snapshot import snapshot_path
    from schemas.settings import load_settings

    base = tmp_path_factory.mktemp("notebooks")
    # 6 planted bad rows give the data-quality review something to show.
    generate(base / "exports", episodes=150, seed=11, bad_rows=6, progress=False)
    resources = {
        "exports_dir": str(base / "exports"),
        "warehouse": str(base / "warehouse.duckdb"),
        "reports_dir": str(base / "reports"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in ("OUTCOMES_SNAPSHOT", "OUTCOMES_AS_OF", "OUTCOMES_CONFIG"):
            mp.delenv(name, raising=False)
        result = defs.resolve_job_def("refresh_all").execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            run_config={"resources": {"outcomes": {"config": resources}}},
            raise_on_error=False,
        )
    assert result.success
    env = {"OUTCOMES_WAREHOUSE": resources["warehouse"]}
    path = snapshot_path(load_settings(env), env=env)
    assert path.is_file()
    return path


def _parameters(values: dict[str, object]):
    source = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})


def run_notebook(name: str, parameters: dict[str, object], checks: str, cwd: Path):
    """Execute notebooks/<name>.py with ``parameters`` injected papermill-style."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    nb.cells.insert(tagged[0] + 1, _parameters(parameters))
    nb.cells.append(nbformat.v4.new_code_cell(checks))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            out.append(output.get("text", ""))
            out.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def _has_figure(nb) -> bool:
    return any(
        "application/vnd.plotly.v1+json" in output.get("data", {})
        for cell in nb.cells
        for output in cell.get("outputs", [])
    )


def test_client_trajectory_explorer(snapshot: Path, tmp_path: Path) -> None:
    nb = run_notebook(
        "client_trajectory",
        {"SNAPSHOT": str(snapshot)},
        checks=(
            "assert EPISODE_ID and INSTRUMENT\n"
            "assert len(fig.data) >= 2  # scores plus cutoff/band/sessions\n"
            "assert set(alerts.columns) >= {'alert_type', 'raised_at'}\n"
            "print('CHECKED', EPISODE_ID, INSTRUMENT, len(alerts))\n"
        ),
        cwd=tmp_path,
    )
    assert "CHECKED" in _text(nb)
    assert _has_figure(nb)


def test_client_trajectory_for_a_chosen_episode(snapshot: Path, tmp_path: Path) -> None:
    import duckdb

    with duckdb.connect(str(snapshot), read_only=True) as con:
        episode, instrument = con.execute(
            "SELECT episode_id, instrument FROM marts.episode_outcomes "
            "WHERE paired ORDER BY episode_id, instrument LIMIT 1"
        ).fetchone()
    nb = run_notebook(
        "client_trajectory",
        {"EPISODE_ID": episode, "INSTRUMENT": instrument, "SNAPSHOT": str(snapshot)},
        checks=f"assert EPISODE_ID == {episode!r} and INSTRUMENT == {instrument!r}\n",
        cwd=tmp_path,
    )
    assert _has_figure(nb)


def test_cohort_outcomes_publish_no_small_cell(snapshot: Path, tmp_path: Path) -> None:
    # k = 5 on 150 episodes: some cells shown, some suppressed.
    nb = run_notebook(
        "cohort_outcomes",
        {"INSTRUMENT": "PHQ-9", "MIN_CELL_SIZE": 5, "SNAPSHOT": str(snapshot)},
        checks=(
            "visible = published_cells[~published_cells['suppressed']]\n"
            "hidden = published_cells[published_cells['suppressed']]\n"
            "assert len(visible) and len(hidden)\n"
            "assert (visible['n_clients'].astype(int) >= K).all()\n"
            "assert hidden[['n_episodes', 'n_clients', 'value']].isna().all().all()\n"
            "assert not set(COUNTS) & set(published_cells.columns)  # private counts dropped\n"
            "assert set(published_cells['dimension']) == set(DIMENSIONS)\n"
            "print('CHECKED', len(visible), len(hidden))\n"
        ),
        cwd=tmp_path,
    )
    assert "CHECKED" in _text(nb)
    assert _has_figure(nb)


def test_cohort_outcomes_default_k(snapshot: Path, tmp_path: Path) -> None:
    nb = run_notebook(
        "cohort_outcomes",
        {"SNAPSHOT": str(snapshot)},
        checks=(
            "assert K == 10\n"
            "visible = published_cells[~published_cells['suppressed']]\n"
            "assert (visible['n_clients'].astype(int) >= 10).all()\n"
        ),
        cwd=tmp_path,
    )
    assert _has_figure(nb)


def test_data_quality_review_lists_what_to_send_back(snapshot: Path, tmp_path: Path) -> None:
    out = tmp_path / "to_exporting_system"
    nb = run_notebook(
        "data_quality",
        {"SNAPSHOT": str(snapshot), "OUTPUT_DIR": str(out), "MAX_EXAMPLES": 5},
        checks=(
            "assert len(rejected) == int(history['rows_quarantined'].sum()) > 0\n"
            "assert int(by_month.to_numpy().sum()) == len(rejected)\n"
            "assert len(send_back) + int(rejected['follows_from'].notna().sum()) "
            "== len(rejected)\n"
            "print('CHECKED', len(rejected))\n"
        ),
        cwd=tmp_path,
    )
    assert "CHECKED" in _text(nb)
    (csv,) = out.glob("quarantine_to_fix_*.csv")
    header = csv.read_text(encoding="utf-8").splitlines()[0]
    assert header == "table_name,source_file,source_row,id,rule,what_it_means,detail"


@pytest.mark.parametrize("name", NAMES)
def test_paired_ipynb_is_in_sync_and_output_stripped(name: str) -> None:
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == [
        (c.cell_type, c.source) for c in script.cells
    ], f"notebooks/{name}.ipynb is out of date: run `jupytext --sync notebooks/{name}.py`"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"notebooks/{name}.ipynb carries outputs: commit it output-stripped"
            )
