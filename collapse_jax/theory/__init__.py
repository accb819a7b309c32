"""Analytic theory: large-sample recursions, Lyapunov solves, spectra (THEORY.md sections 4 and 6)."""
