"""Several ``python -m cl_lora.run`` command lines in one launch, for the streams tests.

    python -m torch.distributed.run --nproc_per_node 2 tests/multiprocess_cli.py RUNS
    python tests/multiprocess_cli.py RUNS      # the same runs in one process

``RUNS`` is a JSON list of argument lists, run one after the other by ``cl_lora.run``'s own
``main`` in this process (the process group is joined once, by the first run): start-up is
most of a tiny run's time. Exits with the first non-zero exit code.
"""

from __future__ import annotations

import json
import sys

from cl_lora.run import main as run


def main(runs: list[list[str]]) -> int:
    for argv in runs:
        code = run(argv)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
