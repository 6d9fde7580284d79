"""A real MLflow tracking server for the tests, as users run one on a login node: `mlflow
server` with a SQLite backend on a free loopback port, started by the test and stopped (its
whole process group) at the end, as the tests start the real Slurm."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 180):
    """Yields the server's URL (http://127.0.0.1:PORT) once it answers /health."""
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
        # without the GenAI job runner (8 more processes), which training does not use
        env={**os.environ, "OMP_NUM_THREADS": "1",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not come up (exit {proc.poll()}):\n"
                                     + (root / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def history(tracking_uri: str, experiment: str = "shg", metric: str = "loss"):
    """(runs of the experiment, {run id: [(step, value), ...] of `metric`})."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    (found,) = [e for e in client.search_experiments() if e.name == experiment]
    runs = client.search_runs([found.experiment_id])
    return runs, {r.info.run_id: [(m.step, m.value) for m in
                                  client.get_metric_history(r.info.run_id, metric)]
                  for r in runs}
