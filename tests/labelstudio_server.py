"""A real Label Studio for the tests, as a team runs one: `label-studio start` on a free loopback
port with its SQLite store in a temporary folder, no browser, a user and API token made
without prompts, stopped (its whole process group) at the end, as the tests start the real
Slurm and MLflow.

Label Studio pins what our environment cannot hold (label-studio-sdk wants
opencv-python-headless < 4.13, we have 5; Django and ~150 more packages), so it lives in a
virtualenv of its own, made with pip on first use into the pytest cache
(.pytest_cache/d/labelstudio/venv, as test_protocols.py keeps xtcocotools; SHG_LABELSTUDIO_HOME
puts it elsewhere, e.g. a CI cache that outlives clean clones), under a lock. The same first
use migrates an empty store once and keeps it as a template: each server starts from a copy
in ~10 s instead of waiting for ~500 Django migrations. Measured on this 2-core machine while
other work ran (load ~3): the virtualenv 54 s (pip --no-compile; 143 s compiling everything),
the template 45 s (made in /dev/shm: 130 s on disk), so a clean clone's first round trip takes
~2 min on one worker and later ones ~20 s. The tests drive the server with label-studio-sdk
from that virtualenv (tests/labelstudio_driver.py), the way a script beside Label Studio would.

Where the virtualenv cannot be made (no package index) the tests skip; in CI (CI=true) that
is a failure. SHG_LABELSTUDIO_TESTS=0 skips them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LABEL_STUDIO = "label-studio==1.23.2"
"""It pins label-studio-sdk==2.1.2, which the driver uses."""
USER, PASSWORD = "shg-tests@localhost", "shg-tests-password"
TOKEN = "shgtests0123456789abcdef"
"""A legacy API token (Authorization: Token ...), set for the user when the template is made."""
DRIVER = Path(__file__).with_name("labelstudio_driver.py")


class Unavailable(Exception):
    """Label Studio's virtualenv could not be made (the reason, with pip's last words)."""


def home(request, tmp_path_factory) -> Path:
    """Where the virtualenv and the template live: SHG_LABELSTUDIO_HOME, else the pytest
    cache (.pytest_cache/d/labelstudio)."""
    if os.environ.get("SHG_LABELSTUDIO_HOME"):
        return Path(os.environ["SHG_LABELSTUDIO_HOME"])
    cache = getattr(request.config, "cache", None)  # None: -p no:cacheprovider
    return Path(cache.mkdir("labelstudio") if cache else
                tmp_path_factory.getbasetemp().parent / "labelstudio")


def _quiet_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV", "PYTHONPATH"))}
    # no look for a newer release on PyPI, no analytics: a server that reaches nothing
    env.update({"LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
                "OMP_NUM_THREADS": "1", **(extra or {})})
    return env


def ensure_venv(root: Path, log=print) -> Path:
    """Label Studio's virtualenv (root/venv) and the template store (root/template), made once
    (under a lock: xdist workers wait for the first); returns the virtualenv."""
    root.mkdir(parents=True, exist_ok=True)
    venv, stamp = root / "venv", root / "done"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == LABEL_STUDIO:
            return venv
        for old in (venv, root / "template"):
            shutil.rmtree(old, ignore_errors=True)
        t0 = time.time()
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 # --no-compile: half the time; the modules Label Studio imports are compiled
                 # once, when the template store is made
                 [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                  "--no-compile", LABEL_STUDIO]]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, env=_quiet_env())
            if proc.returncode:
                shutil.rmtree(venv, ignore_errors=True)
                raise Unavailable(f"{' '.join(step[:4])} failed: "
                                  f"{(proc.stderr or proc.stdout).strip()[-800:]}")
        log(f"made {venv} ({LABEL_STUDIO}) in {time.time() - t0:.0f} s")
        t0 = time.time()
        # the migrations commit one by one: in memory (/dev/shm) they take a third of the time
        shm = Path("/dev/shm")
        with tempfile.TemporaryDirectory(dir=shm if os.access(shm, os.W_OK) else None) as tmp:
            made = Path(tmp) / "data"
            proc = subprocess.run(
                [str(venv / "bin" / "label-studio"), "init", "--quiet", "--no-browser",
                 "--data-dir", str(made), "--username", USER, "--password", PASSWORD,
                 "--user-token", TOKEN, "--enable-legacy-api-token"],
                capture_output=True, text=True, cwd=tmp, env=_quiet_env(), timeout=900)
            if proc.returncode or not (made / "label_studio.sqlite3").is_file():
                raise Unavailable(f"label-studio init failed: "
                                  f"{(proc.stderr + proc.stdout)[-800:]}")
            shutil.copytree(made, root / "template")
        log(f"migrated the template store in {time.time() - t0:.0f} s")
        stamp.write_text(LABEL_STUDIO)
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def labelstudio_server(home: Path, root: Path, document_root: Path, timeout: float = 300):
    """Yields (URL, API token) once the server answers /health; its store is a copy of the
    template in `root`. It serves local files under `document_root`
    (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) to projects with a local storage there."""
    venv = ensure_venv(home)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    shutil.copytree(home / "template", data)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host",
         "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
        env=_quiet_env({"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}))
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"label-studio did not come up (exit {proc.poll()}):\n"
                                     + (root / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url, TOKEN
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def drive(home: Path, url: str, token: str, spec: dict, work: Path,
          timeout: float = 300) -> dict:
    """Run tests/labelstudio_driver.py (label-studio-sdk, in Label Studio's virtualenv) with
    `spec`; returns what it reports."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(json.dumps({"url": url, "token": token, **spec}))
    proc = subprocess.run([str(home / "venv" / "bin" / "python"), str(DRIVER),
                           str(work / "spec.json"), str(work / "report.json")],
                          capture_output=True, text=True, timeout=timeout, env=_quiet_env())
    if proc.returncode:
        raise AssertionError(f"the driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads((work / "report.json").read_text())
