"""Is the Hugging Face Hub usable right now? One short check, so that a run without network
fails in seconds with a one-line fix instead of retrying for minutes; and loading a Hub
dataset behind that check (every Hub stream does it the same way)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from cl_lora.errors import BadInputError
from cl_lora.lazy import lazy_module

datasets = lazy_module("datasets")
huggingface_hub = lazy_module("huggingface_hub")

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


def load_failure(error: BaseException, reachable: bool = True) -> str:
    """Why loading from the Hub failed, in a few words for a one-line error message."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "offline mode is on"
    if not reachable:
        return "cannot reach the Hugging Face Hub and the model is not cached"
    return next(iter(str(error).splitlines()), type(error).__name__)


@contextmanager
def cache_only_when_unreachable() -> Iterator[bool]:
    """Inside, Hub downloads read only the local cache if the Hub cannot be reached (one 3 s
    check), so a model that is not cached fails at once instead of after minutes of retries.

    Yields whether the Hub is reachable.
    """
    constants = huggingface_hub.constants
    if constants.HF_HUB_OFFLINE or env_offline():
        yield False
        return
    if hub_reachable():
        yield True
        return
    previous, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = previous


def no_network_message(stream: str, needs: str, hub_name: str, local: str) -> str:
    """The one-line error of a Hub stream that cannot download: both ways out."""
    return (
        f"{stream} needs {needs}: cannot reach the Hugging Face Hub to download {hub_name}; "
        f"pass --data-dir DIR with {local}, or run on a machine with network access (or with "
        "HF_HUB_OFFLINE=1 and a cached copy)"
    )


def require_hub(message: str) -> None:
    """Fail at once with ``message`` unless a Hub dataset download can work: the network
    answers, or ``datasets`` is in its own offline mode (it then reads only its cache)."""
    if not datasets.config.HF_HUB_OFFLINE and (env_offline() or not hub_reachable()):
        raise BadInputError(message)


def load_hub_dataset(message: str, *args: str) -> datasets.DatasetDict:
    """``datasets.load_dataset(*args)``; a failed download is ``message`` plus its reason.

    Call :func:`require_hub` first: this does not check the network itself.
    """
    try:
        return datasets.load_dataset(*args)
    except (ConnectionError, OSError) as error:
        reason = next(iter(str(error).splitlines()), "")
        raise BadInputError(f"{message} ({type(error).__name__}: {reason})") from error
