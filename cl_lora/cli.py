"""Command-line plumbing shared by every entry point (runs, benchmarks)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from cl_lora.errors import BadInputError


def setup_logging() -> None:
    """The suite's own progress lines (the ``cl_lora`` loggers, INFO) on stderr as bare
    messages; other libraries' only from WARNING up (their INFO lines, such as ``datasets``
    announcing the JAX version it found, are not the run's)."""
    from cl_lora.distributed import launched_rank

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # in a multi-process run the first process reports progress; the others only warnings
    logging.getLogger("cl_lora").setLevel(logging.WARNING if launched_rank() else logging.INFO)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`BadInputError`: one line, exit code 2, no usage dump."""

    def error(self, message: str) -> None:  # noqa: D401
        raise BadInputError(f"{message} ({self.prog} --help lists the options)")


def require_at_least_one(settings: object, names: Sequence[str]) -> None:
    """Reject any of ``settings``'s ``names`` below 1 (None means unset and passes), naming the
    option as the user typed it."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and value < 1:
            raise BadInputError(f"--{name.replace('_', '-')} must be at least 1")


def parse_key_values(pairs: Sequence[str], option: str = "--init-arg") -> dict[str, str]:
    """``KEY=VALUE`` strings to a dict of strings; the receiver coerces the values."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInputError(f"{option} '{pair}' is not KEY=VALUE (e.g. {option} f=0.25)")
        parsed[key.strip()] = value.strip()
    return parsed


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str, what: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``) as a bool; anything else is a
    one-line error naming ``what`` (``bool("false")`` would be True)."""
    key = text.strip().lower()
    if key not in _BOOLEANS:
        raise BadInputError(f"{what}={text!r}: use true or false")
    return _BOOLEANS[key]
