"""How the suite writes an instruction prompt for a language model: the instruction, the input
lines, and the answer cue, one per line. Shared by the instruction streams and the NQ-open probe
data, so neither imports the other."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ANSWER_CUE = "Answer:"


def prompt(instruction: str, lines: Iterable[str]) -> str:
    """The instruction, the input ``lines`` and the answer cue, one per line."""
    return "\n".join([instruction, *lines, ANSWER_CUE])


def choose_one_of(instruction: str, label_names: Sequence[str]) -> str:
    """``instruction`` followed by the answers it allows, so an untrained model knows them."""
    return f"{instruction} Choose one of: {', '.join(label_names)}"
