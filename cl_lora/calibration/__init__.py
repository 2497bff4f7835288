"""Statistics that init methods declare they need, collected with hooks.

Each is a registered collector (:data:`STATISTICS`, see :mod:`.registry`): ``input_cov``
(``C = X^T X`` per distinct layer input), ``grad`` (the loss gradient w.r.t. each adapted
weight) and ``warmup_delta`` (the update of a short plain-LoRA warm-up). This package only
measures; which data it measures on is the caller's choice (the strategy's ``--calib``).
"""

from cl_lora.calibration.covariance import CovarianceCollector, collect_input_covariances
from cl_lora.calibration.gradients import collect_gradients
from cl_lora.calibration.registry import (
    STATISTICS,
    CalibrationData,
    Statistic,
    collect_statistics,
    register_statistic,
)
from cl_lora.calibration.warmup import warmup_deltas

__all__ = [
    "STATISTICS",
    "CalibrationData",
    "CovarianceCollector",
    "Statistic",
    "collect_gradients",
    "collect_input_covariances",
    "collect_statistics",
    "register_statistic",
    "warmup_deltas",
]
