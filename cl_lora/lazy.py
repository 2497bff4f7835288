"""Third-party modules imported on first use, so that ``--help``, ``--list`` and registering the
built-ins cost no more than importing torch (pandas, datasets and the Hub client alone add
seconds). The stdlib's documented ``importlib.util.LazyLoader`` recipe::

    pd = lazy_module("pandas")   # nothing runs yet; the first ``pd.DataFrame`` imports pandas
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """Top-level module ``name``, loaded when an attribute of it is first read (an already
    imported module is returned as it is)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
