"""The `default_compiler` tests, run in one pytest subprocess with XLA's default flags.

The suite compiles with fast-compile flags (conftest.py), under which the tests of
bit-identity across programs are left out: those promises are about the code the
users' XLA generates. The subprocess starts when collection ends
(``start_in_background``, called by conftest.py), on the upper half of the CPUs
(the second core of a 2-core machine), while this process runs the other tests;
the test below, which conftest.py runs last, waits for it.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import FAST_COMPILE, USER_XLA_FLAGS, pin_to_background_cpus, stop_at_exit

TESTS = Path(__file__).parent
_RUNS = {}  # selection -> (process, stdout file, stderr file)


def _start(selection):
    env = dict(os.environ, COLLAPSE_JAX_TEST_FAST_COMPILE="0", XLA_FLAGS=USER_XLA_FLAGS)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", f"default_compiler and {selection}",
            str(TESTS)]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(args, cwd=TESTS.parent, env=env, stdout=out, stderr=err, text=True)
    pin_to_background_cpus(proc.pid)
    stop_at_exit(lambda: proc.poll() is None and proc.kill())
    _RUNS[selection] = (proc, out, err)


def start_in_background(item):
    selection = item.callspec.params.get("selection") if hasattr(item, "callspec") else None
    if selection is not None and selection not in _RUNS:
        _start(selection)


@pytest.mark.parametrize("selection", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
def test_default_compiler_tests_pass_with_the_default_flags(selection):
    if selection not in _RUNS:  # collected without conftest.py's hook
        _start(selection)
    proc, out, err = _RUNS[selection]
    try:
        proc.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    with out, err:
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    tail = stdout[-8000:] + stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", stdout)
    assert passed and int(passed.group(1)) > 1, tail  # more than the check below


@pytest.mark.default_compiler
def test_runs_with_the_users_flags_only():
    flags = os.environ.get("XLA_FLAGS", "")
    assert all(k not in flags or k in USER_XLA_FLAGS for k in FAST_COMPILE), flags
