"""The `default_compiler` tests, run in one pytest subprocess with XLA's default flags.

The suite compiles with fast-compile flags (conftest.py), under which the tests of
bit-identity across programs are left out: those promises are about the code the
users' XLA generates.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_COMPILE, USER_XLA_FLAGS

TESTS = Path(__file__).parent


@pytest.mark.parametrize("selection", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
def test_default_compiler_tests_pass_with_the_default_flags(selection):
    env = dict(os.environ, COLLAPSE_JAX_TEST_FAST_COMPILE="0", XLA_FLAGS=USER_XLA_FLAGS)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", f"default_compiler and {selection}",
            str(TESTS)]
    proc = subprocess.run(args, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=3600)
    tail = proc.stdout[-8000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) > 1, tail  # more than the check below


@pytest.mark.default_compiler
def test_runs_with_the_users_flags_only():
    flags = os.environ.get("XLA_FLAGS", "")
    assert all(k not in flags or k in USER_XLA_FLAGS for k in FAST_COMPILE), flags
