"""Task-generic theory (THEORY.md sections 4 and 6), lowest module first.

* :mod:`.weights`: effective mixing weights (graph arithmetic; usable by task theories);
* :mod:`.lyapunov`: the differentiable discrete Lyapunov solver;
* :mod:`.large_sample`: the large-sample recursion ``V_t = W V W' + D`` scaled by ``tr(A C)``;
* :mod:`.moments`: the :func:`moments` dispatcher (a task's exact theory, else large-sample);
* :mod:`.spectral`: in-simulation spectra (``rho(W)``, ``rho(Q)``, stationary error).

This package imports nothing on its own, so a task's theory (e.g.
:mod:`collapse_jax.tasks.linear_regression.exact`) may import :mod:`.weights`
and :mod:`.lyapunov` without a cycle.
"""
