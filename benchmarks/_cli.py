"""What the benchmark scripts share at their edges: printing, the JSON file, exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cl_lora.errors import BadInputError


def finish(result: dict[str, Any], table: str, json_path: Path | None) -> dict[str, Any]:
    """Print the table, write the numbers to ``json_path`` when given, return them."""
    print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"numbers: {json_path}")
    return result


def entry_point(main: Callable[[], Any]) -> None:
    """Run ``main``; bad input is one line on stderr and exit code 2."""
    try:
        main()
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
