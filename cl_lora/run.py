"""``python -m cl_lora.run``: one continual-learning run from the command line.

Exit codes: 0 success, 2 bad input (one line, no traceback), 1 a failure while running.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import baselines
from cl_lora import backbones, inits, streams
from cl_lora.cli import OneLineParser, parse_key_values
from cl_lora.config import DEFAULT_MAX_LENGTH, RunConfig
from cl_lora.errors import BadInputError, RunFailure
from cl_lora.experiment import run_experiment
from cl_lora.strategy.calibrate import parse_sources

DEFAULTS = RunConfig()
log = logging.getLogger("cl_lora")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m cl_lora.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--list",
        action="store_true",
        help="list streams, backbones, init methods, baselines and plugins, then exit",
    )
    p.add_argument("--stream", default=DEFAULTS.stream, help="task stream (see --list)")
    p.add_argument("--init", help=f"LoRA init method (see --list; default {DEFAULTS.init})")
    p.add_argument(
        "--init-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument of the init method; repeatable",
    )
    p.add_argument("--baseline", help="train with a baseline instead (see --list)")
    p.add_argument(
        "--baseline-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument of the baseline; repeatable",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="a continual-learning plugin (ewc, lwf, replay) with the re-initialized LoRA; "
        "repeatable",
    )
    p.add_argument(
        "--plugin-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument of a chosen plugin (each key belongs to one plugin); repeatable",
    )
    p.add_argument(
        "--calib",
        help="data of input covariances: comma-separated probe, task, memory "
        "(default: the init method's own)",
    )
    p.add_argument("--calib-size", type=int, default=DEFAULTS.calib_size, help="examples/source")
    p.add_argument(
        "--backbone",
        default=DEFAULTS.backbone,
        help="text: local folder or Hub name; vision: a timm model name, a local timm folder, "
        "NAME=FILE, or mnist-vit; language model: smollm2-135m, a local folder, a .gguf file "
        "or a Hub name (default: the stream's own)",
    )
    p.add_argument(
        "--scenario",
        choices=["task", "class", "domain"],
        help="continual-learning scenario, for streams that offer several (default: the stream's)",
    )
    p.add_argument("--targets", help="comma-separated module-name suffixes LoRA adapts")
    p.add_argument("--rank", type=int, default=DEFAULTS.rank)
    p.add_argument("--alpha", type=float, default=DEFAULTS.alpha)
    p.add_argument("--rslora", action="store_true", help="scale alpha/sqrt(rank) (rsLoRA)")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="adapter learning rate")
    p.add_argument(
        "--lr-search",
        help="candidate adapter learning rates, comma-separated: each trains the first task on "
        "80%% of its training data, the best on the other 20%% trains the stream",
    )
    p.add_argument("--head-lr", type=float, default=DEFAULTS.head_lr)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW's")
    p.add_argument(
        "--warmup-ratio",
        type=float,
        default=DEFAULTS.warmup_ratio,
        help="share of each task's steps with a linear learning-rate warm-up",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument(
        "--eval-batch-size",
        type=int,
        default=DEFAULTS.eval_batch_size,
        help="examples per evaluation (and calibration) batch",
    )
    p.add_argument(
        "--max-length",
        type=int,
        help=f"tokens per example (default: the stream's; {DEFAULT_MAX_LENGTH} for most)",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--max-train-per-task", type=int)
    p.add_argument("--max-test-per-task", type=int)
    p.add_argument(
        "--data-dir",
        help="local data folder (GLUE in the standard TSV layout; O-LoRA's CL_Benchmark)",
    )
    p.add_argument(
        "--order", type=int, help="published task order (cl-benchmark: 1-3, long-15: 4-6)"
    )
    p.add_argument(
        "--tasks",
        help="your own task sequence from the stream's pool, comma-separated (cl-benchmark, "
        "long-15)",
    )
    p.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default=DEFAULTS.precision, choices=["fp32", "bf16"])
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic torch kernels (slower on GPU; CPU runs are deterministic anyway)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (language models: less GPU memory)",
    )
    p.add_argument(
        "--knowledge",
        help="language models' knowledge probe: nq-open (packaged, default) or "
        "lm-eval:TASK[,TASK...] (lm-evaluation-harness tasks; needs lm-eval and the Hub)",
    )
    p.add_argument("--output-dir", default="results/runs", type=Path)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue this config's run after its last finished task; skip it if finished",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        stream=args.stream,
        init=args.init,  # None: the default, or no init for a baseline that uses none
        init_args=parse_key_values(args.init_arg),
        baseline=args.baseline,
        baseline_args=parse_key_values(args.baseline_arg, "--baseline-arg"),
        plugins=tuple(args.plugin),
        plugin_args=parse_key_values(args.plugin_arg, "--plugin-arg"),
        calib=parse_sources(args.calib) if args.calib else None,
        calib_size=args.calib_size,
        backbone=args.backbone,
        scenario=args.scenario,
        targets=tuple(t for t in args.targets.split(",") if t) if args.targets else None,
        rank=args.rank,
        alpha=args.alpha,
        rslora=args.rslora,
        epochs=args.epochs,
        lr=args.lr,
        lr_search=parse_rates(args.lr_search) if args.lr_search else None,
        head_lr=args.head_lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_length=args.max_length,
        seed=args.seed,
        max_train_per_task=args.max_train_per_task,
        max_test_per_task=args.max_test_per_task,
        data_dir=args.data_dir,
        order=args.order,
        tasks=tuple(t for t in args.tasks.split(",") if t) if args.tasks else None,
        device=args.device,
        precision=args.precision,
        deterministic=args.deterministic,
        gradient_checkpointing=args.gradient_checkpointing,
        knowledge=args.knowledge,
    )


def parse_rates(text: str) -> tuple[float, ...]:
    """``1e-4,5e-4`` as floats; anything else is a one-line error."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BadInputError(
            f"--lr-search {text}: give comma-separated rates, e.g. 1e-4,5e-4,1e-3"
        ) from None


def listing() -> str:
    """Streams and init methods, one line each (with each method's arguments)."""
    lines = ["streams:"]
    lines += [f"  {name:<19} {streams.describe(name)}" for name in streams.available()]
    lines.append("backbone families (--backbone; packaged names in brackets):")
    for family in backbones.FAMILIES:
        owned = f"  [{', '.join(family.aliases)}]" if family.aliases else ""
        lines.append(f"  {family.name:<19} {family.description}{owned}")
    lines.append("init methods:")
    for name in inits.available():
        method = inits.get(name)
        parts = [", ".join(f"{k}={a.default}" for k, a in method.arguments.items())]
        if method.needs:
            parts.append(f"needs {'+'.join(method.needs)} on {'+'.join(method.calibration)}")
        extras = "; ".join(part for part in parts if part)
        lines.append(f"  {name:<19} {method.description}" + (f"  [{extras}]" if extras else ""))
    for title, names, get in (
        ("baselines (--baseline):", baselines.available(), baselines.get),
        (
            "plugins (--plugin, with any --init):",
            baselines.available_plugins(),
            baselines.get_plugin,
        ),
    ):
        lines.append(title)
        for name in names:
            entry = get(name)
            extras = ", ".join(f"{k}={a.default}" for k, a in entry.arguments.items())
            lines.append(f"  {name:<19} {entry.description}" + (f"  [{extras}]" if extras else ""))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "  -  " if value is None or value != value else f"{value:.3f}"


def summary(result: dict[str, Any]) -> str:
    """The accuracy matrix and the metrics as a terminal table."""
    names = [task["name"] for task in result["tasks"]]
    width = max(len(n) for n in names) + 2
    lines = [
        f"{result['stream']['name']} / {result['method']['name']} / seed {result['seed']}",
        "R[i][j]: score on task j (columns) after training task i (rows)",
        " " * width + "".join(f"{n[:9]:>10}" for n in names),
    ]
    for name, row in zip(names, result["matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{_fmt(v):>10}" for v in row))
    metrics = result["metrics"]
    for key in ("acc", "avg_incremental_acc", "learning_acc", "bwt", "forgetting", "fwt"):
        why = metrics["undefined_reasons"].get(key, "")
        lines.append(f"{key:<20} {_fmt(metrics[key])}" + (f"  ({why})" if why else ""))
    retention = result.get("retention")
    if retention and retention.get("curve"):
        curve = " ".join(_fmt(v).strip() for v in retention["curve"])
        lines.append(
            f"{'retention':<20} {curve}  (probe {retention['probe']}, {retention['head']} head; "
            f"drop {_fmt(retention['drop']).strip()})"
        )
    if retention and retention.get("gold_loglik"):
        loglik = retention["gold_loglik"]
        curve = " ".join(_fmt(v).strip() for v in loglik["curve"])
        lines.append(
            f"{'':<20} {curve}  (gold log-likelihood per token; "
            f"drop {_fmt(loglik['drop']).strip()})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = build_parser().parse_args(argv)
        if args.list:
            print(listing())
            return 0
        output = run_experiment(
            config_from_args(args), args.output_dir, verbose=not args.quiet, resume=args.resume
        )
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailure as error:
        print(f"run failed: {error}", file=sys.stderr)
        return 1
    if output.skipped:
        print(f"already finished: {output.run_dir} (nothing ran)")
    print(summary(output.result))
    print(f"result: {output.run_dir / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
