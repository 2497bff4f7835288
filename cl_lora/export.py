"""A run's model as PEFT adapters (``--save-adapters``), and merged language models from them
(``python -m cl_lora.export RUN --task t --merged DIR``).

After each task ``t`` (1-based) a run with ``--save-adapters`` writes ``adapters/after-<t>-<task>/``
in its folder: the model after task ``t`` as one PEFT LoRA adapter on the *original* pretrained
weights, in PEFT's own layout (``adapter_config.json``, ``adapter_model.safetensors``), so
``PeftModel.from_pretrained(pretrained, folder)`` loads it with no cl_lora code. Beside it,
``heads.safetensors`` holds the task heads of a stream that has them. With
``--save-task-adapters`` also ``adapters/task-<t>-<task>/``: task ``t``'s own adapter, to load on
the model after task ``t - 1`` (merged).

The adapter is built from the strategy's :class:`~cl_lora.deltas.LoRAHistory`, which holds
every factor that ever changed a base weight, so it is exact up to float32 rounding. Each
episode (one attached adapter) adds to a layer's weight, as low-rank terms ``B @ A``:

- ``s B A``, the trained adapter, with the scale ``s`` folded into ``B``;
- ``-s B_0 A_0``, a residual init's pending term (PiSSA, MiLoRA, OLoRA, CorDA, LoRA-Null): what
  PEFT's ``path_initial_model_for_weight_conversion`` does, ``[B, -B_0] [A; A_0]`` at doubled
  rank, so the adapter applies to the pristine weights instead of the residual ones;
- ``left @ right`` for every term a method folded in (LoRA-Dash's ``(u d) v``).

The episodes' terms sit side by side, so the rank grows with ``t``. Each layer's
``lora_alpha`` equals its rank, so PEFT's scaling is 1 (layers of other ranks are listed in
``rank_pattern``/``alpha_pattern``).

``adapters/adapters.json`` says which folder holds which task and what backbone the adapters
apply to (family, name, fingerprint of the pretrained weights); the export command reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cl_lora.cli import OneLineParser, setup_logging
from cl_lora.errors import BadInputError
from cl_lora.results import replace_folder

if TYPE_CHECKING:
    from cl_lora.strategy import LoRAStrategy

ADAPTERS = "adapters"  # the folder in a run's folder
MANIFEST = "adapters.json"
HEADS = "heads.safetensors"
WEIGHTS = "adapter_model.safetensors"  # PEFT's file name for adapter weights
_PREFIX = "base_model.model."  # PEFT's key prefix of a layer in an adapter file
#: PEFT's task type by backbone family (what ``PeftModel.from_pretrained`` builds).
TASK_TYPES = {
    "causal-lm": "CAUSAL_LM",
    "seq2seq-lm": "SEQ_2_SEQ_LM",
    "text-encoder": "FEATURE_EXTRACTION",
}

#: One low-rank term of a layer: ``(B, A)``, the layer adds ``B @ A`` to its weight.
Term = tuple[torch.Tensor, torch.Tensor]


# -- low-rank terms from the history ------------------------------------------------------------
def episode_terms(episode: dict[str, Any], scale: float) -> dict[str, list[Term]]:
    """Per layer, the terms one episode of :meth:`LoRAHistory.state` added to its weight, in
    float32: ``(s B, A)``, then ``(-s B_0, A_0)`` for a residual init, then each fold."""
    terms: dict[str, list[Term]] = {}
    for name, final in episode["final"].items():
        layer = [(scale * final["B"].float(), final["A"].float())]
        initial = episode["init"].get(name)
        if initial is not None:
            layer.append((-scale * initial["B"].float(), initial["A"].float()))
        layer += [(left.float(), right.float()) for left, right in episode["folds"].get(name, [])]
        terms[name] = layer
    return terms


def history_terms(episodes: Sequence[dict[str, Any]], scale: float) -> dict[str, list[Term]]:
    """Per layer, every episode's terms in the order they were applied: the model is the
    pretrained one plus, on each layer, the sum of its terms."""
    layers: dict[str, list[Term]] = {}
    for episode in episodes:
        for name, terms in episode_terms(episode, scale).items():
            layers.setdefault(name, []).extend(terms)
    return layers


def stacked(terms: Sequence[Term]) -> Term:
    """Terms side by side as one ``(B, A)`` whose product is their sum."""
    return torch.cat([B for B, _ in terms], 1), torch.cat([A for _, A in terms], 0)


def own_terms(now: dict[str, list[Term]], before: dict[str, Term]) -> dict[str, list[Term]]:
    """Per layer, the change from ``before`` (the stacked adapter saved after the task before)
    to ``now``: the leading terms of ``now`` that ``before`` starts with, bit for bit (the
    episodes finished earlier), cancel; what is left of ``now`` is added and what is left of
    ``before`` (an adapter that kept training, as in seq-lora) subtracted. Layers that did not
    change are left out."""
    own: dict[str, list[Term]] = {}
    for name in [*now, *(key for key in before if key not in now)]:
        terms = now.get(name, [])
        B0, A0 = before.get(name, (None, None))
        done = kept = 0
        for B, A in terms:
            end = done + B.shape[1]
            if B0 is None or end > B0.shape[1]:
                break
            if not (torch.equal(B0[:, done:end], B) and torch.equal(A0[done:end], A)):
                break
            done, kept = end, kept + 1
        rest = list(terms[kept:])
        if B0 is not None and done < B0.shape[1]:
            rest.append((-B0[:, done:], A0[done:]))
        if rest:
            own[name] = rest
    return own


# -- PEFT's adapter layout ----------------------------------------------------------------------
def write_adapter(
    folder: Path, layers: dict[str, Term], task_type: str | None, base_model: str | None
) -> None:
    """``layers`` (name in the base model -> stacked ``(B, A)``) as a PEFT LoRA adapter in
    ``folder``: PEFT's ``LoraConfig`` saved by PEFT, the factors under PEFT's keys. Every
    layer's alpha equals its rank (scaling 1); the most common rank is ``r``, the others are
    in ``rank_pattern`` and ``alpha_pattern`` (PEFT matches their keys as regular expressions:
    escaped full names)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    ranks = {name: B.shape[1] for name, (B, _) in layers.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(name): r for name, r in ranks.items() if r != rank}
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=list(layers),
        lora_dropout=0.0,
        task_type=task_type,
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    tensors = {}
    for name, (B, A) in layers.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = A.contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = B.contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


def read_adapter(folder: Path) -> dict[str, Term]:
    """The stacked ``(B, A)`` per layer of an adapter :func:`write_adapter` wrote."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / WEIGHTS))
    layers: dict[str, Term] = {}
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            name = key.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
            layers[name] = (tensors[f"{_PREFIX}{name}.lora_B.weight"], A)
    return layers


def _describe(function: Callable | None) -> str | None:
    """``module.name: first docstring line`` of a backbone's feature function."""
    if function is None:
        return None
    doc = (function.__doc__ or "").strip().splitlines()
    name = f"{function.__module__}.{function.__qualname__}"
    return f"{name}: {doc[0]}" if doc else name


def write_heads(path: Path, model: torch.nn.Module, tasks: int, features: str | None) -> bool:
    """The model's parts outside the encoder (task heads; a class-incremental head's mask of
    the classes seen) as a safetensors file whose metadata maps each task (1-based) to its
    head's key prefix and names the features the heads read. False (nothing written) when the
    model has no heads."""
    from safetensors.torch import save_file

    state = {
        key: value.detach().to("cpu", copy=True).contiguous()
        for key, value in model.state_dict().items()
        if not key.startswith("encoder.")
    }
    if not any(key.startswith("heads.") for key in state):
        return False
    heads = {
        str(task + 1): f"heads.{model.head_key(task)}."
        for task in range(tasks)
        if model.has_head(task)
    }
    info = {"task_heads": heads, "features": features}
    if "seen_classes" in state:
        info["class_mask"] = "seen_classes: logits of classes not trained yet are masked"
    save_file(state, str(path), metadata={"format": "pt", "cl_lora": json.dumps(info)})
    return True


# -- the run's folders ----------------------------------------------------------------------------
def _slug(name: str) -> str:
    """A task name as a folder-name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "task"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)


class AdapterSaver:
    """Writes a run's adapters after each task (see the module docstring) into ``folder``
    (the run's ``adapters/``); ``own``: each task's own adapter too."""

    def __init__(self, strategy: LoRAStrategy, folder: Path, own: bool = False) -> None:
        self.strategy = strategy
        self.folder = Path(folder)
        self.own = own

    @contextmanager
    def _staged(self, name: str) -> Iterator[Path]:
        """A fresh folder to write into, moved to ``name`` in the adapters folder when the
        block ends without an error (and removed either way)."""
        staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=".staging."))
        try:
            yield staging
            replace_folder(staging, self.folder / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _manifest(self, task: int) -> dict[str, Any]:
        """What the folder holds so far; a run starting its first task starts it afresh."""
        path = self.folder / MANIFEST
        if task > 0 and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        if self.folder.exists():
            shutil.rmtree(self.folder)  # an earlier attempt of this run: rewritten task by task
        strategy = self.strategy
        backbone = strategy.backbone
        encoder = strategy.model.encoder
        return {
            "format": 1,
            "backbone": {
                "family": backbone.family,
                "name": backbone.source.get("name"),
                "fingerprint": backbone.source.get("fingerprint"),
                "dtype": str(next(encoder.parameters()).dtype).removeprefix("torch."),
            },
            "problem": strategy.problem.kind,
            "tasks": [t.name for t in strategy.stream.tasks],
            "saved": {},
        }

    def save(self, task: int) -> Path | None:
        """Write the adapter after ``task`` (0-based), its heads and, if asked, its own
        adapter; returns the adapter's folder, or ``None`` when the model has not changed from
        the pretrained one (no LoRA was attached yet)."""
        from cl_lora.lora import lora_scale  # PEFT: loaded by a run, not by the export's --help

        strategy = self.strategy
        manifest = self._manifest(task)
        episodes = strategy.history.state(strategy.model.encoder)
        layers = history_terms(episodes, lora_scale(strategy.lora))
        if not layers:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        base = manifest["backbone"]
        task_type = TASK_TYPES.get(base["family"])
        name = _slug(strategy.stream.tasks[task].name)
        entry: dict[str, Any] = {"adapter": f"after-{task + 1}-{name}"}
        adapter = {layer: stacked(terms) for layer, terms in layers.items()}
        features = _describe(strategy.backbone.features)
        with self._staged(entry["adapter"]) as staging:
            write_adapter(staging, adapter, task_type, base["name"])
            write_heads(staging / HEADS, strategy.model, task + 1, features)
        if self.own:
            earlier = [int(t) for t in manifest["saved"] if int(t) < task + 1]
            before = (
                read_adapter(self.folder / manifest["saved"][str(max(earlier))]["adapter"])
                if earlier
                else {}
            )
            own = {layer: stacked(terms) for layer, terms in own_terms(layers, before).items()}
            entry["own"] = f"task-{task + 1}-{name}" if own else None  # None: nothing changed
            if own:
                with self._staged(entry["own"]) as staging:
                    write_adapter(staging, own, task_type, None)
        manifest["saved"][str(task + 1)] = entry
        _write_json(self.folder / MANIFEST, manifest)
        return self.folder / entry["adapter"]


# -- reading a run's adapters ---------------------------------------------------------------------
def saved_adapter(run_dir: Path, task: int) -> tuple[Path, dict[str, Any]]:
    """The folder of the adapter after ``task`` (1-based) of the run in ``run_dir``, and the
    run's adapter manifest; one line of bad input when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInputError(f"no run folder {run_dir}: pass a folder of results/runs")
    path = run_dir / ADAPTERS / MANIFEST
    if not path.is_file():
        raise BadInputError(f"run {run_dir.name} saved no adapters: rerun it with --save-adapters")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        tasks, saved = manifest["tasks"], manifest["saved"]
    except (ValueError, KeyError, TypeError):
        raise BadInputError(f"{path} is damaged: rerun the run with --save-adapters") from None
    if not 1 <= task <= len(tasks):
        raise BadInputError(f"--task {task}: run {run_dir.name} has tasks 1..{len(tasks)}")
    folder = run_dir / ADAPTERS / (saved.get(str(task)) or {}).get("adapter", "")
    if str(task) not in saved or not (folder / WEIGHTS).is_file():
        raise BadInputError(
            f"--task {task}: run {run_dir.name} saved no adapter after task {task} "
            f"({tasks[task - 1]}): the run stopped before it, or no LoRA had been trained yet; "
            f"saved: {', '.join(sorted(saved, key=int)) or 'none'}"
        )
    return folder, manifest


def write_merged(run_dir: Path, task: int, out: Path) -> Path:
    """Write the merged language model after ``task`` (1-based) of the run in ``run_dir`` to
    ``out`` (``save_pretrained``, tokenizer included), from its saved adapter: the pretrained
    backbone loaded as the run loaded it (its weights checked against the run's fingerprint),
    the adapter merged in float32, the weights saved in the run's dtype. Written to a temporary
    folder beside ``out`` and renamed, so ``out`` appears only when complete."""
    from cl_lora.backbones import FAMILIES, LoadOptions
    from cl_lora.backbones.base import weights_fingerprint

    folder, manifest = saved_adapter(run_dir, task)
    base = manifest["backbone"]
    if manifest.get("problem") != "text-to-text":
        raise BadInputError(
            f"--merged writes a language model; run {Path(run_dir).name} trained task heads on "
            f"a {base['family'] or 'custom'} backbone: load {folder} with PEFT and its {HEADS}"
        )
    out = Path(out)
    if out.exists():
        raise BadInputError(f"--merged {out} exists: pass a new folder")
    if not out.parent.is_dir():
        raise BadInputError(f"--merged {out}: folder {out.parent} does not exist")
    family = FAMILIES.get(base["family"])
    dtype = getattr(torch, base["dtype"])
    backbone = family.load(base["name"], LoadOptions(dtype=dtype))
    fingerprint = weights_fingerprint(backbone.encoder)
    if base.get("fingerprint") not in (None, fingerprint):
        raise BadInputError(
            f"backbone {base['name']} now has other weights than run {Path(run_dir).name} "
            f"trained on (fingerprint {fingerprint}, the run's {base['fingerprint']})"
        )
    from peft import PeftModel

    model = PeftModel.from_pretrained(backbone.encoder.float(), str(folder))
    merged = model.merge_and_unload().to(dtype)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        merged.save_pretrained(str(staging))
        backbone.tokenizer.save_pretrained(str(staging))
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# -- the command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m cl_lora.export",
        description="Write the merged language model after a task of a run saved with "
        "--save-adapters.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run's folder")
    parser.add_argument(
        "--task", type=int, required=True, help="the model after this task (1-based)"
    )
    parser.add_argument(
        "--merged",
        type=Path,
        required=True,
        metavar="DIR",
        help="a new folder for the merged model and its tokenizer (save_pretrained)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 written, 2 bad input (one line, nothing written)."""
    setup_logging()
    try:
        args = build_parser().parse_args(argv)
        out = write_merged(args.run_dir, args.task, args.merged)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"merged model after task {args.task}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
