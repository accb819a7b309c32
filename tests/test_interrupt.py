"""Ctrl-C stops a test run within seconds even while the main thread is stuck in C code."""

import os
import signal
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The main thread blocks SIGINT and sleeps 60 s in C: like a long XLA compile, it
# cannot run the Python-level handler, so KeyboardInterrupt never comes.
STUCK_TEST = textwrap.dedent("""
    import signal, time
    def test_stuck():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        open(__file__ + ".started", "w").close()
        time.sleep(60)
""")


def _run_and_interrupt(tmp_path, plugin: bool, wait_s: float):
    test = tmp_path / "test_stuck.py"
    test.write_text(STUCK_TEST)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    if plugin:
        args[3:3] = ["-p", "prompt_interrupt_plugin"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, str(tmp_path)]))
    (tmp_path / "prompt_interrupt_plugin.py").write_text(
        "def pytest_configure(config):\n    from prompt_interrupt import install\n    install(config)\n")
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started = tmp_path / "test_stuck.py.started"
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the stuck test never started"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, time.monotonic() - t0, err
    return proc.returncode, time.monotonic() - t0, err


def test_ctrl_c_exits_within_seconds_while_stuck_in_c(tmp_path):
    rc, took, err = _run_and_interrupt(tmp_path, plugin=True, wait_s=30)
    assert rc == 2, err[-2000:]
    assert took < 15, took
    assert "interrupted" in err


def test_without_the_watcher_ctrl_c_waits(tmp_path):
    # The control: the same run without the watcher is still stuck 6 s after Ctrl-C.
    rc, took, err = _run_and_interrupt(tmp_path, plugin=False, wait_s=6)
    assert rc is None, (rc, took, err[-2000:])
