"""Published numbers as data (``results/references/*.csv``) and their matching to our rows.

One row per (paper, table, stream, setup, backbone, method, metric, value), each with its
``source`` (paper and table, or the repository file it was read from), whether it was
``checked`` against the paper itself, and a verbatim ``quote``. A row without a source is
never shown: it is skipped with a warning.

A reference is comparable with our runs when stream, backbone and metric are the same;
published backbone names are mapped to ours by :data:`BACKBONE_ALIASES`. Everything else is
"published, different setup".
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = [
    "paper",
    "table",
    "stream",
    "setup",
    "backbone",
    "method",
    "metric",
    "value",
    "unit",
    "source",
    "checked",
    "quote",
]

# Published backbone name -> ours. InfLoRA's ViT-B/16 pretrained on ImageNet-21K is timm's
# in21k checkpoint, which timm now names vit_base_patch16_224.augreg_in21k; O-LoRA's T5 is the
# original T5-large (not the LM-adapted one), CoDe-LoRA's LLaMA the Hub's Llama-2-7b-hf.
BACKBONE_ALIASES = {
    "vit-b/16-in21k": "vit_base_patch16_224.augreg_in21k",
    "t5-large": "google-t5/t5-large",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
}
_SCALE = {"%": 0.01, "fraction": 1.0}


def load_references(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every reference row from the CSV files in ``folder`` (sorted by file name), with
    ``fraction`` (the value on our 0..1 scale) and its CSV ``line`` added; and a warning per row or
    file that was skipped (no source, unknown unit, a value that is not a number, missing
    columns). A missing folder gives no rows and no warning."""
    frames, warnings = [], []
    for path in sorted(Path(folder).glob("*.csv")) if Path(folder).is_dir() else []:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [column for column in COLUMNS if column not in frame.columns]
        if missing:
            warnings.append(f"{path}: skipped, missing columns {', '.join(missing)}")
            continue
        frame["line"] = range(2, len(frame) + 2)
        value = pd.to_numeric(frame["value"], errors="coerce")
        frame["fraction"] = value * frame["unit"].map(_SCALE)
        problems = {
            "no source": frame["source"].str.strip() == "",
            "unit is neither % nor fraction": ~frame["unit"].isin(list(_SCALE)),
            "value is not a number": value.isna(),
        }
        bad = pd.Series(False, index=frame.index)
        for reason, mask in problems.items():
            for line in frame.loc[mask & ~bad, "line"]:
                warnings.append(f"{path}:{line}: skipped, {reason}")
            bad |= mask
        frames.append(frame[~bad])
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "line", "fraction"]), warnings
    return pd.concat(frames, ignore_index=True), warnings


def backbone_key(name: str) -> str:
    """What two backbone names must share to be one model: the name without its Hub owner, in
    lower case (``t5-large``, ``google-t5/t5-large`` and ``T5-Large`` are the same weights)."""
    return str(name).split("/")[-1].lower()


def split_references(
    references: pd.DataFrame, ours: pd.DataFrame, metrics: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(matching, other)``: the references that share stream, backbone and one of
    ``metrics`` with a row of ``ours`` (which has ``stream`` and ``backbone``), with a
    ``backbone_ours`` column; and the rest."""
    if references.empty:
        return references, references
    mapped = references.assign(
        backbone_ours=references["backbone"].map(lambda name: BACKBONE_ALIASES.get(name, name))
    )
    setups = {(s, backbone_key(b)) for s, b in zip(ours["stream"], ours["backbone"], strict=True)}
    matches = [
        (stream, backbone_key(backbone)) in setups and metric in metrics
        for stream, backbone, metric in zip(
            mapped["stream"], mapped["backbone_ours"], mapped["metric"], strict=True
        )
    ]
    mask = pd.Series(matches, index=mapped.index, dtype=bool)
    return mapped[mask], mapped[~mask]
