"""The two ways a run can end badly, so the CLI can map them to exit codes.

Bad input is the user's to fix (exit 2, one line, no traceback); a run failure happens while
running (exit 1). Messages are one line that says what to do.
"""


class BadInputError(Exception):
    """Input the user can fix: unknown names, bad arguments, missing data or assets."""


class RunFailure(Exception):
    """A failure while running that is not the user's input (e.g. a NaN loss)."""
