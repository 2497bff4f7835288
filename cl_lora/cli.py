"""Command-line plumbing shared by every entry point (runs, benchmarks)."""

from __future__ import annotations

import argparse

from cl_lora.errors import BadInputError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`BadInputError`: one line, exit code 2, no usage dump."""

    def error(self, message: str) -> None:  # noqa: D401
        raise BadInputError(f"{message} ({self.prog} --help lists the options)")
