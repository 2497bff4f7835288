#!/usr/bin/env bash
# Rebuild the committed results: every sweep below, then the leaderboard.
# Each sweep skips runs whose result.json exists, so re-running this finishes a stopped
# build and re-does nothing. Budget (2 CPU cores, see results/README.md): text streams
# 128 training / 50 test examples per task, 1 epoch, 32 tokens; the image stream 256 / 100.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=results/benchmark-runs
SEEDS="0 1 2"
TEXT="--set max_train_per_task=128 --set max_test_per_task=50 --set epochs=1 --set max_length=32"
VISION="--set max_train_per_task=256 --set max_test_per_task=100 --set epochs=1"
# lora-dash / lora-tsd add their directions after t optimizer steps; the default t=100 never
# comes at 8 (text) or 16 (image) steps per task, so they get t=4.
INITS="lora gaussian pissa milora intermediate olora mica lora-null lora-null-v2 corda-kpm
  corda-ipm eva lora-ga lora-init lora-dash:t=4 lora-tsd:t=4"
BASELINES="seq-ft frozen joint seq-lora o-lora inflora"
F_SWEEP="intermediate:f=0 intermediate:f=0.1 intermediate:f=0.25 intermediate:f=0.5
  intermediate:f=0.75 intermediate:f=0.9 intermediate:f=1"

sweep() { python -m cl_lora.sweep --seeds $SEEDS --max-parallel 2 --output-dir "$OUT" "$@"; }

for stream in offline-text offline-vision offline-domains; do
  budget=$TEXT
  [ "$stream" = offline-vision ] && budget=$VISION
  sweep --streams "$stream" --inits $INITS --baselines $BASELINES $budget
  for plugin in ewc lwf replay; do
    sweep --streams "$stream" --inits lora --set plugins=$plugin $budget
  done
  if [ "$stream" = offline-text ]; then
    sweep --streams offline-text --inits $F_SWEEP $budget
  fi
done

# The standard LLM CL benchmark on SmolLM2-135M, on the tasks whose files the O-LoRA copy holds
# (amazon, agnews): 128 training / 100 test examples per task, 1 epoch, batch 8, lr 1e-3 (O-LoRA's
# recipe), 192 tokens. OLORA_DATA: O-LoRA's CL_Benchmark folder.
OLORA_DATA=${OLORA_DATA:-../shared/data/o-lora-cl-benchmark/CL_Benchmark}
if [ -d "$OLORA_DATA" ]; then
  sweep --streams cl-benchmark --inits lora pissa lora-null --set tasks=amazon,agnews \
    --set data_dir="$OLORA_DATA" --set max_train_per_task=128 --set max_test_per_task=100 \
    --set epochs=1 --set batch_size=8 --set lr=1e-3 --set max_length=192 --max-parallel 1
else
  echo "skipping cl-benchmark: no O-LoRA CL_Benchmark folder at $OLORA_DATA (set OLORA_DATA)"
fi

# The findings of results/FINDINGS.md (each sweep run alone on one core: OMP_NUM_THREADS=1).
FINDINGS=results/findings-runs
# (a) intermediate components on offline-vision, task-incremental, 1024 training / 200 test
# images per task, 2 epochs: f in 0..1 and plain lora at three learning rates, 5 seeds.
F_WINDOWS="intermediate:f=0 intermediate:f=0.1 intermediate:f=0.25 intermediate:f=0.5
  intermediate:f=0.75 intermediate:f=0.9 intermediate:f=1 lora"
for lr in 1e-3 3e-3 1e-2; do
  python -m cl_lora.sweep --streams offline-vision --inits $F_WINDOWS --seeds 0 1 2 3 4 \
    --set scenario=task --set lr=$lr --set max_train_per_task=1024 --set max_test_per_task=200 \
    --set epochs=2 --max-parallel 1 --output-dir "$FINDINGS/intermediate-vision"
done
python -m cl_lora.leaderboard.findings intermediate "$FINDINGS/intermediate-vision" --out results/findings
# (c) LoRA-Dash / LoRA-Init / LoRA-TSD against LoRA on offline-text, 512 training / 200 test
# examples per task, 2 epochs (64 steps per task; Dash adds its directions at t=20), 32 tokens,
# each method's learning rate searched among 2.5e-4, 5e-4, 1e-3, 5 seeds.
python -m cl_lora.sweep --streams offline-text --inits lora lora-dash:t=20 lora-init lora-tsd:t=20 \
  --seeds 0 1 2 3 4 --set max_train_per_task=512 --set max_test_per_task=200 --set epochs=2 \
  --set max_length=32 --set lr_search=2.5e-4,5e-4,1e-3 --max-parallel 1 \
  --output-dir "$FINDINGS/dash-text"
python -m cl_lora.leaderboard.findings versus-lora "$FINDINGS/dash-text" --out results/findings
# (c) again with each rate searched on the default wide grid (7 rates 1e-5..1e-2, up to 2 more
# past an edge), seed-major.
for seed in 0 1 2 3 4; do
  python -m cl_lora.sweep --streams offline-text --inits lora lora-dash:t=20 lora-init lora-tsd:t=20 \
    --seeds "$seed" --set max_train_per_task=512 --set max_test_per_task=200 --set epochs=2 \
    --set max_length=32 --set lr_search=1e-05,3.16e-05,0.0001,0.000316,0.001,0.00316,0.01 \
    --set lr_extend=2 --max-parallel 1 --output-dir "$FINDINGS/dash-text-wide"
done
python -m cl_lora.leaderboard.findings versus-lora "$FINDINGS/dash-text-wide" --out results/findings/wide

# (b) LoRA-Null's knowledge claim on SmolLM2: a single-task fine-tune, as the paper does
# (offline-instruct's trec-question: 96 examples x 2 epochs), each method's learning rate
# searched, seeds 0-4 (seed-major, so a stopped sweep still covers every method).
for seed in 0 1 2 3 4; do
  python -m cl_lora.sweep --streams offline-instruct --inits lora pissa milora lora-null corda-kpm \
    --seeds "$seed" --set tasks=trec-question --set lr_search=2.5e-4,5e-4,1e-3 --max-parallel 1 \
    --output-dir "$FINDINGS/knowledge-trec"
done
python -m cl_lora.leaderboard.findings knowledge "$FINDINGS/knowledge-trec" --out results/findings

# O-LoRA's LLaMA recipe against the suite's default recipe (docs/recipes.md):
# SmolLM2-135M for LLaMA, fp32 on the CPU (the recipe's bf16 is for CUDA), O-LoRA's own amazon
# and agnews files, 256 training / 50 test examples per task. --grad-accumulation 2 keeps the
# default recipe's batch of 16 (as 2 x 8) within this machine's memory at 512 tokens.
OLORA_DATA=../shared/data/o-lora-cl-benchmark
RECIPE_RUN="--stream cl-benchmark --tasks amazon,agnews --data-dir $OLORA_DATA --backbone smollm2-135m
  --baseline o-lora --max-train-per-task 256 --max-test-per-task 50 --output-dir results/o-lora-recipe-runs"
python -m cl_lora.run --recipe o-lora-llama --precision fp32 $RECIPE_RUN --resume --quiet
python -m cl_lora.run $RECIPE_RUN --grad-accumulation 2 --resume --quiet

# General abilities (docs/general-abilities.md): LoRA-Null on offline-instruct with four
# knowledge probes, and the commonsense stream answered by likelihood instead of generation.
python -m cl_lora.run --stream offline-instruct --init lora-null --knowledge nq-open,mmlu,piqa,boolq \
  --output-dir results/general-ability-runs --resume --quiet
python -m cl_lora.run --stream offline-commonsense --init lora --answer-by likelihood \
  --output-dir results/general-ability-runs --resume --quiet

python -m cl_lora.leaderboard results/benchmark-runs --out results --format md csv --html results/site \
  --compare
