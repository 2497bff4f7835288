"""Benchmarks of cl-lora's own costs; run them from the repository root (``python -m
benchmarks.<name>``)."""

import cl_lora._torchvision_compat  # noqa: F401  (before anything imports torchvision/avalanche)
