"""Grids of runs (streams x init methods x seeds) on this machine or a Ray cluster.

Each run's folder is named by the hash of its resolved config, so a finished run is skipped
and a stopped one resumes from its last finished task: re-running a sweep is always safe.
"""

from cl_lora.sweep.grid import expand_grid, parse_init_spec, parse_overrides

__all__ = ["expand_grid", "parse_init_spec", "parse_overrides"]
