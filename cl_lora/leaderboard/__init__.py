"""Leaderboards over many runs (``python -m cl_lora.leaderboard RUNS_DIR``).

``collect`` reads result files into a table of runs, ``aggregate`` turns it into per-method
statistics over seeds, ranks and paired comparisons with ``lora``, ``references`` loads and
matches published numbers, ``plots`` draws the figures, ``report`` writes Markdown and CSV and
``site`` the static HTML site. Data flows in that order; nothing here trains.
"""
