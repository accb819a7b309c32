"""The Monte Carlo engine: draws, the scan over generations, ``simulate`` and its results."""

from collapse_jax.engine.results import SimulationResult, Summary
from collapse_jax.engine.scan import Carry, Config, Trace, scan_generations, simulate_replicate
from collapse_jax.engine.simulate import as_key, check_replicates, make_config, simulate

__all__ = ["simulate", "simulate_replicate", "scan_generations", "make_config", "check_replicates",
           "as_key", "Config", "Carry", "Trace", "SimulationResult", "Summary"]
