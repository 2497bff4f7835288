"""Is the Hugging Face Hub usable right now? One short check, so that a run without network
fails in seconds with a one-line fix instead of retrying for minutes."""

from __future__ import annotations

import os

import huggingface_hub

HUB_TIMEOUT_S = 3.0


def env_offline() -> bool:
    """True when the user switched the Hub libraries to offline mode in the environment."""
    return any(
        os.environ.get(variable, "").upper() in {"1", "ON", "YES", "TRUE"}
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable() -> bool:
    """One short request to the Hub endpoint.

    Left to itself, ``datasets.load_dataset`` retries for about 25 s per call before giving up.
    """
    try:
        huggingface_hub.get_session().head(
            huggingface_hub.constants.ENDPOINT, timeout=HUB_TIMEOUT_S
        )
    except Exception:  # any failure to get an answer (DNS, refused, timeout) means unreachable
        return False
    return True


def load_failure(error: BaseException) -> str:
    """Why loading from the Hub failed, in a few words for a one-line error message."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "offline mode is on"
    return next(iter(str(error).splitlines()), type(error).__name__)
