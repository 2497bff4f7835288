"""Statistics that init methods declare they need, collected with hooks.

``input_cov`` (``C = X^T X`` per distinct layer input), ``grad`` (the loss gradient w.r.t. each
adapted weight) and ``warmup_delta`` (the update of a short plain-LoRA warm-up). This package
only measures; which data it measures on is the strategy's choice (``--calib``).
"""

from cl_lora.calibration.covariance import CovarianceCollector, collect_input_covariances
from cl_lora.calibration.gradients import collect_gradients
from cl_lora.calibration.warmup import warmup_deltas

STATISTICS = ("input_cov", "grad", "warmup_delta")

__all__ = [
    "STATISTICS",
    "CovarianceCollector",
    "collect_gradients",
    "collect_input_covariances",
    "warmup_deltas",
]
