"""The Avalanche-based strategy: per task, merge the last adapter, re-init LoRA, train, evaluate."""

from cl_lora.strategy.loop import run_stream
from cl_lora.strategy.outcome import StreamOutcome
from cl_lora.strategy.plugins import TaskScorePlugin
from cl_lora.strategy.template import LoRAStrategy, make_evaluator

__all__ = ["LoRAStrategy", "StreamOutcome", "TaskScorePlugin", "make_evaluator", "run_stream"]
