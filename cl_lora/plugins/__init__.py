"""Continual-learning plugins that compose with the suite's fresh LoRA per task and any
``--init`` (``--plugin NAME``): Avalanche's plugins adapted to merged LoRA.

====== =========================================================================
ewc    Elastic Weight Consolidation on the merged weights (Kirkpatrick et al.)
lwf    Learning without Forgetting (Li & Hoiem)
replay experience replay from a class-agnostic, task-balanced memory
====== =========================================================================
"""

from cl_lora.plugins import ewc, lwf, replay  # noqa: F401  (built-ins register on import)
from cl_lora.plugins.registry import PLUGINS, Plugin, register_plugin, split_plugin_args

__all__ = ["PLUGINS", "Plugin", "register_plugin", "split_plugin_args"]
