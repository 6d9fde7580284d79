"""How the commands end their process (shg.exit): the exit status, everything printed and the
exit handlers all survive skipping the interpreter's teardown."""

import subprocess
import sys


def test_exit_now_keeps_the_status_the_output_and_the_exit_handlers(tmp_path):
    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, logging, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "logging.getLogger('x').warning('logged')\n"
        "print('unflushed', end='')\n"
        "sys.stderr.write('err-unflushed')\n"
        "from shg.exit import exit_now\n"
        "exit_now(7)\n"
        "print('never')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 7
    assert proc.stdout == "unflushed"  # through a pipe: block-buffered until the flush
    assert "logged" in proc.stderr and "err-unflushed" in proc.stderr
    assert marker.read_text() == "yes"


def test_the_shg_command_exits_with_the_status_main_returns(tmp_path):
    # a user error is returned by main() as 2 (not raised as SystemExit), with its one line
    bad = subprocess.run([sys.executable, "-m", "shg.cli", "info", "--model",
                          str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "shg info: error:" in bad.stderr and "no best/" in bad.stderr
