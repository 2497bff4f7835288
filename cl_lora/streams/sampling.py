"""The one place that decides which examples a task keeps.

Samples are class-balanced and deterministic: they depend on the data and a fixed split seed,
never on the run seed, so every run and every method sees the same train and test sets. A class
gets an even share of the requested size (at most ``ceil(n / C)`` examples); a class with fewer
examples contributes all it has, so a sample can be smaller than requested.
"""

from __future__ import annotations

import numpy as np

from cl_lora.lazy import lazy_module

pd = lazy_module("pandas")

SPLIT_SEED = 0


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop empty texts, texts whose copies disagree on the label, and duplicate texts.

    Deduplicating before splitting is what keeps a test example out of the training set.
    """
    keys = [column for column in ("text", "text_pair") if column in frame.columns]
    frame = frame.assign(**{key: frame[key].astype(str).str.strip() for key in keys})
    frame = frame[(frame[keys] != "").all(axis=1)]
    consistent = frame.groupby(keys)["label"].transform("nunique") == 1
    return frame[consistent].drop_duplicates(keys).reset_index(drop=True)


def _quotas(n: int, num_classes: int) -> list[int]:
    """``n`` spread as evenly as possible over the classes (the lower ids get the remainder)."""
    base, extra = divmod(n, num_classes)
    return [base + (label < extra) for label in range(num_classes)]


def balanced_split(
    labels: np.ndarray, n_train: int, n_test: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint, class-balanced, shuffled train and test row indices into ``labels``.

    The test set takes its share of a class first, but never more than half of that class, so
    every class that has two examples is seen in training.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label, (q_train, q_test) in enumerate(
        zip(_quotas(n_train, num_classes), _quotas(n_test, num_classes), strict=True)
    ):
        members = rng.permutation(np.flatnonzero(labels == label))
        k_test = min(q_test, len(members) // 2) if q_train else min(q_test, len(members))
        k_train = min(q_train, len(members) - k_test)
        test.append(members[:k_test])
        train.append(members[k_test : k_test + k_train])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def balanced_sample(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Class-balanced, shuffled row indices of at most ``n`` examples of one existing split."""
    return balanced_split(labels, n, 0, num_classes)[0]
