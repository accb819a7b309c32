"""Progress lines of long diagnose work (issue 12): what is being computed, on stderr, off when asked
or (by default) when stderr is not a terminal; the diagnosis itself is the same either way."""

import sys

import pytest

import collapse_jax as cj
from collapse_jax import cli

MC = 16  # Gram draws: the Monte Carlo line names this count


@pytest.fixture(scope="module")
def pair():
    return cj.graphs.chain(3, n=20, m=20), cj.LinearRegression(dim=2)


def test_exact_diagnose_says_what_it_computes(pair, capsys):
    eco, task = pair
    loud = cj.diagnose(eco, task, exact=True, mc_samples=MC, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("diagnose: topology and the spectrum of W (3 models)"), err
    assert any(f"Monte Carlo over {MC} Gram draws" in line for line in err), err
    assert any(line.startswith("diagnose: exact stationary errors") for line in err), err
    assert err[-1].startswith("diagnose: done ("), err
    # Default (None) under pytest's capture: stderr is not a terminal, so nothing is printed.
    quiet = cj.diagnose(eco, task, exact=True, mc_samples=MC)
    assert capsys.readouterr().err == ""
    assert str(quiet) == str(loud)


def test_default_progress_follows_the_terminal_and_the_size_of_the_work(pair, capsys, monkeypatch):
    eco, task = pair
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    cj.diagnose(eco, task)  # short work (3 models, no Monte Carlo): silent even on a terminal
    assert capsys.readouterr().err == ""
    cj.diagnose(eco, task, progress=False)
    assert capsys.readouterr().err == ""
    cj.diagnose(eco, None, progress=True)  # topology only: one stage, then done
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[-1].startswith("diagnose: done"), err


def test_progress_must_be_a_bool(pair):
    with pytest.raises(ValueError, match="progress"):
        cj.diagnose(*pair, progress="yes")


def test_cli_diagnose_progress_on_a_terminal_only(capsys, monkeypatch):
    args = ["diagnose", "chain:3", "--dim", "2"]
    assert cli.main(args) == 0
    assert "diagnose:" not in capsys.readouterr().err  # not a terminal: no stage lines
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "diagnose: large-sample noise" in out.err and "verdict:" in out.out
    assert cli.main(args + ["--no-progress"]) == 0
    assert "diagnose:" not in capsys.readouterr().err
