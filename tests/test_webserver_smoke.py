"""The UI starts from the shipped workspace and shows every asset, schedule and sensor.

Starts ``dagster-webserver`` on a free local port with a throw-away DAGSTER_HOME
(the shipped dagster.yaml), waits for it, asks its GraphQL endpoint for the asset
nodes, schedules and sensors, and stops it, all within a bounded time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 180  # seconds; loading the code location takes ~10 s on an idle box

QUERY = """
{
  assetNodes { assetKey { path } }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        schedules { name scheduleState { status } }
        sensors { name sensorState { status } }
      }
    }
  }
  locationStatusesOrError {
    ... on WorkspaceLocationStatusEntries {
      entries { name loadStatus }
    }
  }
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the webserver's process group (it runs a code server child), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_webserver_serves_every_asset_schedule_and_sensor(tmp_path: Path) -> None:
    from pipelines.definitions import defs

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OUTCOMES_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        "OUTCOMES_REPORTS_DIR": str(tmp_path / "reports"),
    }
    for name in (
        "OUTCOMES_MONTHLY_SCHEDULE",
        "OUTCOMES_NIGHTLY_SCHEDULE",
        "OUTCOMES_EXPORTS_SENSOR",
    ):
        env.pop(name, None)  # the shipped defaults are what this test checks
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "webserver.log").open("w")
    webserver = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "webserver.log").read_text()[-5000:]
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() - started < STARTUP_TIMEOUT, (
                "webserver did not answer in time:\n"
                + (tmp_path / "webserver.log").read_text()[-5000:]
            )
            time.sleep(1)

        # The code location loads in the background: wait until it is LOADED.
        while True:
            data = _graphql(f"{base}/graphql", QUERY)
            statuses = {
                e["name"]: e["loadStatus"] for e in data["locationStatusesOrError"]["entries"]
            }
            if statuses and all(s == "LOADED" for s in statuses.values()):
                data = _graphql(f"{base}/graphql", QUERY)
                break
            assert time.monotonic() - started < STARTUP_TIMEOUT, statuses
            time.sleep(1)
    finally:
        _stop(proc)
        log.close()

    served = {tuple(node["assetKey"]["path"]) for node in data["assetNodes"]}
    expected = {tuple(key.path) for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert expected and expected <= served, sorted(expected - served)
    assert ("published", "warehouse_snapshot") in served

    (repo,) = data["repositoriesOrError"]["nodes"]
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    assert schedules == {"monthly_qi_report": "RUNNING", "nightly_refresh": "STOPPED"}
    assert sensors == {"exports_sensor": "STOPPED", "dead_run_janitor": "RUNNING"}
    assert time.monotonic() - started < STARTUP_TIMEOUT + 60
