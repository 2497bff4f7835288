"""The two ways a run can end badly, so the CLI can map them to exit codes.

Bad input is the user's to fix (exit 2, one line, no traceback); a run failure happens while
running (exit 1). Messages are one line that says what to do.
"""

import difflib


class BadInputError(Exception):
    """Input the user can fix: unknown names, bad arguments, missing data or assets."""


class RunFailure(Exception):
    """A failure while running that is not the user's input (e.g. a NaN loss)."""


class LossNotFinite(RunFailure):
    """Training diverged: the loss became NaN or infinite (a learning-rate search scores such
    a candidate NaN instead of ending the run)."""


def did_you_mean(name: str, known: list[str], n: int = 3, cutoff: float = 0.6) -> str:
    """``"did you mean 'a', 'b'? "`` for the names of ``known`` close to ``name``, else ``""``."""
    close = difflib.get_close_matches(name, known, n=n, cutoff=cutoff)
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""


def unknown_name(kind: str, name: str, known: list[str]) -> BadInputError:
    """The one-line error for an unknown registered name, with close matches as suggestions."""
    hint = did_you_mean(name, known)
    return BadInputError(f"unknown {kind} '{name}': {hint}(python -m cl_lora.run --list shows all)")
