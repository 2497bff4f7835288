"""The trace stream: TRACE's order, --tasks, its folder layout (small folders written here in
TRACE's layout: its real data is not available), its collator's format, each task's metric on
hand-computed cases against TRACE's code (BeyonderXX/TRACE at 462e39f), OP and BWT, the recipe
against scripts/train_lora.sh, and a run through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cl_lora import streams
from cl_lora.errors import BadInputError
from cl_lora.metrics import summarize
from cl_lora.streams import scoring
from cl_lora.streams.trace import ORDER, TASKS
from cl_lora.streams.trace_metrics import (
    answer_letter,
    edit_similarity,
    fuzz_ratio,
    py150_clean,
    rouge_l,
    sari,
    sari_normalize,
    sari_sentence,
    verbatim_accuracy,
)

# TRACE's instructions (inference/ICL.py, TASK_PROMT), which its released prompts start with.
INSTRUCTIONS = {
    "C-STANCE": "判断以下文本对指定对象的态度，选择一项：A.支持，B.反对，C.中立。输出A，B或者C。\n",
    "FOMC": "What is the monetary policy stance for the following text? A. dovish, B. hawkish, "
    "C. neutral. Choose one from A, B and C.\n",
    "MeetingBank": "Write a summary of the following meeting transcripts.\n",
    "Py150": "Continue writing the code.\n",
    "ScienceQA": "Choose an answer for the following question and give your reasons.\n\n",
    "NumGLUE-cm": "Solve the following math problem.\n",
    "NumGLUE-ds": "Solve the following math problem.\n",
    "20Minuten": "Provide a simplified version of the following paragraph in German.\n\n",
}
ANSWERS = {
    "C-STANCE": ["A", "B", "C"],
    "FOMC": ["A", "B", "C"],
    "MeetingBank": ["The council approved the budget. The vote was 5 to 2.", "Item tabled."],
    "Py150": ["return <NUM_LIT>", "print ( <STR_LIT:hi> )"],
    "ScienceQA": ["A\nBecause plants need light.", "B\nMetal conducts heat."],
    "NumGLUE-cm": ["12", "7.5"],
    "NumGLUE-ds": ["3", "40"],
    "20Minuten": ["Der Zug fährt heute nicht.", "Es regnet morgen."],
}


def write_task(root: Path, folder: str, rows: int = 4, files=("train", "eval", "test")) -> None:
    """A task folder in TRACE's layout: ``rows`` prompt/answer examples per split file."""
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    answers = ANSWERS[folder]
    for split in files:
        examples = [
            {"prompt": f"{INSTRUCTIONS[folder]}{split} input {i}\nAnswer:",
             "answer": answers[i % len(answers)]}
            for i in range(rows)
        ]  # fmt: skip
        (path / f"{split}.json").write_text(json.dumps(examples, ensure_ascii=False))


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``tmp/TRACE/LLM-CL-Benchmark_500`` with all eight task folders."""
    root = tmp_path / "TRACE" / "LLM-CL-Benchmark_500"
    for folder in INSTRUCTIONS:
        write_task(root, folder)
    return root


def options(**kwargs) -> streams.StreamOptions:
    return streams.StreamOptions(**kwargs)


def test_default_order_is_traces_and_each_task_gets_traces_metric(layout: Path) -> None:
    # scripts/train_lora.sh line 5: --dataset_name C-STANCE,FOMC,MeetingBank,Py150,ScienceQA,
    # NumGLUE-cm,NumGLUE-ds,20Minuten
    assert [TASKS[name].folder for name in ORDER] == [
        "C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds",
        "20Minuten",
    ]  # fmt: skip
    stream = streams.build("trace", options(data_dir=layout))
    assert stream.name == "trace" and stream.text_format == "joined"
    assert [task.name for task in stream.tasks] == list(ORDER)
    # inference/infer_single.py lines 324-341: the eval module each task is scored with
    assert {task.name: task.metric for task in stream.tasks} == {
        "c-stance": "trace-accuracy",  # eval_CStance.py: caculate_accuracy
        "fomc": "trace-accuracy",  # eval_FOMC.py: caculate_accuracy
        "meetingbank": "trace-rouge-l",  # eval_MeetingBank.py: rouge-L (bleu aside)
        "py150": "trace-similarity",  # eval_Py150.py: caculate_fuzz after postprocess
        "scienceqa": "trace-answer-letter",  # eval_ScienceQA.py: accuracy of datum[0]
        "numglue-cm": "trace-accuracy",  # eval_NumGLUE_cm.py: caculate_accuracy
        "numglue-ds": "trace-accuracy",  # eval_NumGLUE_ds.py: caculate_accuracy
        "20minuten": "trace-sari",  # eval_20Minuten.py: sari (bleu, rouge aside)
    }
    assert stream.provenance["data_dir"] == str(layout.resolve())


def test_prompts_and_answers_are_the_files_own(layout: Path) -> None:
    """The prompt is used verbatim and the answer is the target, as TRACE's collator reads
    instance['prompt'] and instance['answer'] (utils/data/data_collator.py lines 72-73)."""
    stream = streams.build("trace", options(data_dir=layout, tasks=("ScienceQA",)))
    (task,) = stream.tasks
    raw = json.loads((layout / "ScienceQA" / "test.json").read_text())
    assert task.test["prompt"] == [example["prompt"] for example in raw]
    assert task.test["target"] == [example["answer"] for example in raw]
    assert [task.label_names[label] for label in task.test["label"]] == task.test["target"]


def test_caps_keep_the_first_examples_and_a_null_answer_is_empty(layout: Path) -> None:
    path = layout / "FOMC" / "train.json"
    examples = json.loads(path.read_text())
    examples[1]["answer"] = None  # raw_datasets.py lines 122-125: get_answer returns ''
    path.write_text(json.dumps(examples))
    (task,) = streams.build(
        "trace", options(data_dir=layout, tasks=("fomc",), max_train_per_task=2)
    ).tasks
    # utils/data/data_utils.py lines 246-253: sample_ratio keeps the first examples
    assert task.train["prompt"] == [examples[0]["prompt"], examples[1]["prompt"]]
    assert task.train["target"] == ["A", ""]
    assert len(task.test) == 4


def test_the_folder_or_its_parent(layout: Path, tmp_path: Path) -> None:
    parent = layout.parent
    assert streams.build("trace", options(data_dir=parent)).provenance["data_dir"] == str(
        layout.resolve()
    )
    write_task(parent / "LLM-CL-Benchmark_5000", "FOMC")
    with pytest.raises(BadInputError, match="holds 2 TRACE folders .*LLM-CL-Benchmark_500, "):
        streams.build("trace", options(data_dir=parent))
    (tmp_path / "empty").mkdir()
    for data_dir, message in [
        (None, "pass --data-dir with its LLM-CL-Benchmark_500"),
        (tmp_path / "empty", "holds no TRACE task folder"),
        (tmp_path / "nowhere", "is not a folder"),
    ]:
        with pytest.raises(BadInputError, match=message):
            streams.build("trace", options(data_dir=data_dir))


def test_tasks_picks_any_sequence_and_order_is_refused(layout: Path) -> None:
    stream = streams.build("trace", options(data_dir=layout, tasks=("20Minuten", "C-STANCE")))
    assert stream.name == "trace:20minuten,c-stance"
    assert [task.name for task in stream.tasks] == ["20minuten", "c-stance"]
    for bad, message in [
        (options(tasks=("fomc", "FOMC")), "names a task twice"),
        (options(tasks=("fomcc",)), r"'fomcc': did you mean 'fomc'\? its tasks are C-STANCE, FOMC"),
        (options(order=1), "trace has one task order"),
    ]:
        with pytest.raises(BadInputError, match=message):
            streams.build("trace", options(data_dir=layout, tasks=bad.tasks, order=bad.order))


def test_missing_files_are_one_line_naming_each(layout: Path) -> None:
    (layout / "FOMC" / "test.json").unlink()
    (layout / "Py150" / "train.json").unlink()
    (layout / "Py150" / "eval.json").unlink()  # never read: not needed
    with pytest.raises(BadInputError) as error:
        streams.build("trace", options(data_dir=layout))
    message = str(error.value)
    assert "lacks 2 file(s)" in message and "\n" not in message
    assert "FOMC/test.json" in message and "Py150/train.json" in message
    streams.build("trace", options(data_dir=layout, tasks=("c-stance",)))  # its files are there


def test_a_file_not_in_traces_format_is_bad_input(layout: Path) -> None:
    (layout / "FOMC" / "train.json").write_text(json.dumps([{"sentence": "x", "label": "A"}]))
    with pytest.raises(BadInputError, match="FOMC/train.json is not in TRACE's format"):
        streams.build("trace", options(data_dir=layout, tasks=("fomc",)))


def test_the_metric_packages_missing_is_one_line(layout: Path, monkeypatch) -> None:
    monkeypatch.setattr(scoring, "find_spec", lambda module: None if module == "rouge" else 1)
    with pytest.raises(BadInputError, match=r"need rouge: pip install -e \"\.\[trace\]\""):
        streams.build("trace", options(data_dir=layout))
    streams.build("trace", options(data_dir=layout, tasks=("fomc", "20minuten")))


# -- metrics, each against TRACE's code on cases computed by hand ------------------------------
def test_accuracy_is_exact_text_equality() -> None:
    # metrics.py lines 76-86: `if prediction == "" or target == "": continue`,
    # `if prediction == target: scores += 1`, then scores / len(results)
    assert verbatim_accuracy("A", "A", "") == 1.0
    assert verbatim_accuracy(" A", "A", "") == 0.0  # nothing is stripped
    assert verbatim_accuracy("a", "A", "") == 0.0  # nor lower-cased
    assert verbatim_accuracy("", "", "") == 0.0  # skipped, still counted in len(results)
    values = scoring.text_scores("trace-accuracy", ["A", "B", "", "7.5"], ["A", "C", "A", "7.5"],
                                 [""] * 4)  # fmt: skip
    assert scoring.score("trace-accuracy", values, [0] * 4)["score"] == 2 / 4


def test_scienceqa_compares_the_first_characters() -> None:
    # evaluations/eval_ScienceQA.py lines 6-13 (answers.append(datium[0])) and line 23
    assert answer_letter("A\nBecause the sun.", "A\nBecause plants need light.", "") == 1.0
    assert answer_letter("B", "A\nBecause plants need light.", "") == 0.0
    assert answer_letter(" A", "A", "") == 0.0
    assert answer_letter("", "A", "") == 0.0  # TRACE: IndexError on datum[0]


def test_rouge_l_is_the_rouge_packages_f_with_the_answer_as_hypothesis() -> None:
    # metrics.py lines 53-57 and 67: Rouge(metrics=["rouge-l"]).get_scores(target, prediction,
    # avg=True)["rouge-l"]["f"] (rouge 1.0.1: summary-level LCS over sentences split at ".",
    # words counted once, f = 2pr / (p + r + 1e-8)).
    # "the cat sat on the mat" / "the cat is on the mat": LCS words {the, cat, on, mat} = 4 of 5
    # distinct words each side: p = r = 4/5
    assert rouge_l("the cat is on the mat", "the cat sat on the mat", "") == pytest.approx(
        2 * 0.8 * 0.8 / (1.6 + 1e-8), abs=1e-12
    )
    # The order matters through the LCS rouge reconstructs: with the answer "a b" as hypothesis
    # and the generation "b a. a" as reference, the LCS of reference "b a" with "a b" is {a}
    # and "a" adds nothing: 1 of 2 words, f = 0.5; the other way round {b} and {a} make 2 of 2.
    assert rouge_l("b a. a", "a b", "") == pytest.approx(2 * 0.25 / (1 + 1e-8), abs=1e-12)
    assert rouge_l("a b", "b a. a", "") == pytest.approx(2 * 1.0 / (2 + 1e-8), abs=1e-12)
    assert rouge_l("", "the cat", "") == 0.0  # metrics.py line 65: skipped
    assert rouge_l("...", "the cat", "") == 0.0  # rouge raises: TRACE's evaluation would stop


def test_edit_similarity_is_fuzz_ratio_after_the_literal_cleanup() -> None:
    # evaluations/eval_Py150.py lines 6-12: <NUM_LIT> -> 0, <STR_LIT>/<CHAR_LIT> dropped,
    # <KIND_LIT:value> -> value
    assert py150_clean("x = <NUM_LIT> + <STR_LIT> + <CHAR_LIT>") == "x = 0 +  + "
    assert py150_clean("print ( <STR_LIT:hi> , <NUM_LIT:3> )") == "print ( hi , 3 )"
    # fuzzywuzzy 0.18 fuzz.ratio without python-Levenshtein: int(round(100 * difflib ratio)),
    # 100 for equal texts (utils.check_for_equivalence), 0 for an empty one
    assert fuzz_ratio("abcd", "abce") == 75  # 2 * 3 matched / 8 characters
    assert fuzz_ratio("a", "abcdefghijklmno") == 12  # 2 * 1 / 16 = 12.5: Python rounds to even
    assert fuzz_ratio("", "") == 100 and fuzz_ratio("", "a") == 0
    # metrics.py lines 126-135: scores += fuzz.ratio(prediction, target); reported / 100 here
    assert edit_similarity("print ( hi )", "print ( <STR_LIT:hi> )", "") == 1.0
    assert edit_similarity("abcd", "abce", "") == 0.75
    assert edit_similarity("<STR_LIT>", "x", "") == 0.0  # empty after the clean-up: skipped


def test_sari_is_the_hub_scripts_sari() -> None:
    # metrics.py lines 141-144: load_metric("sari").compute(sources=inputs, predictions=results,
    # references=[[label] for label in data]); the script lower-cases and 13a-tokenizes
    assert sari_normalize("Der Zug, heute!") == "der zug , heute !"
    # the script's own documented example: {'sari': 26.953601953601954}
    sources = "About 95 species are currently accepted ."
    references = ["About 95 species are currently known .", "About 95 species are now accepted .",
                  "95 species are now accepted ."]  # fmt: skip
    assert 100 * sari_sentence(
        sari_normalize(sources),
        sari_normalize("About 95 you now get in ."),
        [sari_normalize(r) for r in references],
    ) == pytest.approx(26.953601953601954, abs=1e-12)
    # By hand: source "a b", generation "a b" (a copy), answer "a c". Unigrams: keep p = 1/2
    # (a kept rightly, b wrongly), r = 1 -> F 2/3; nothing deleted -> 1; nothing added while c
    # should be -> F 0. Bigrams: keep p = 0, r = 1 (0/0) -> 0; delete 1; add 0. Tri- and
    # 4-grams: none anywhere -> 1, 1, 1. SARI = ((2/3+0+1+1)/4 + 1 + (0+0+1+1)/4) / 3 = 13/18.
    assert sari("a b", "a c", "a b") == pytest.approx(13 / 18, abs=1e-12)
    assert sari("a c", "a c", "a b") == 1.0  # the answer itself


def test_a_tasks_score_is_the_mean_and_chance_the_majority_answer(layout: Path) -> None:
    stream = streams.build("trace", options(data_dir=layout, tasks=("fomc", "py150")))
    fomc, py150 = stream.tasks
    assert fomc.chance == 2 / 4  # A, B, C, A: always "A"
    # Py150's test answers alternate "return <NUM_LIT>" and "print ( <STR_LIT:hi> )"
    other = fuzz_ratio("return 0", "print ( hi )") / 100
    assert py150.chance == pytest.approx((1 + other + 1 + other) / 4)
    assert fomc.score([1.0, 0.0, 0.5, 0.5], [0, 0, 0, 0]) == {"trace-accuracy": 0.5, "score": 0.5}


def test_op_is_acc_and_bwt_trace_divides_by_the_number_of_tasks() -> None:
    """TRACE (paper, section 3.3): OP_T = 1/T sum_i R_{T,i}; BWT_T = 1/T sum_i (R_{T,i} -
    R_{i,i})."""
    R = [[0.5, 0.1, 0.0], [0.4, 0.6, 0.2], [0.3, 0.5, 0.9]]
    metrics = summarize(R)
    assert metrics["acc"] == pytest.approx((0.3 + 0.5 + 0.9) / 3)  # OP
    assert metrics["bwt_trace"] == pytest.approx(((0.3 - 0.5) + (0.5 - 0.6) + 0) / 3)
    assert metrics["bwt"] == pytest.approx(((0.3 - 0.5) + (0.5 - 0.6)) / 2)
    one = summarize([[0.5]])
    assert one["bwt_trace"] is None and "two tasks" in one["undefined_reasons"]["bwt_trace"]


# -- TRACE's collator ---------------------------------------------------------------------------
@pytest.fixture
def problem(layout: Path):
    from llm_fixtures import tiny_llama

    from cl_lora.problems import build_problem

    tasks = ("fomc", "20minuten", "numglue-cm")  # numbers: " 12" takes a token more than "12"
    stream = streams.build("trace", options(data_dir=layout, tasks=tasks))
    return build_problem(stream, tiny_llama(), max_length=64, prompt_keep="end")


def test_training_reads_bos_prompt_and_answer_as_one_string_and_eos(problem) -> None:
    """utils/data/data_collator.py lines 76-80 and 31-59: tokenize(instruction + label) with bos
    and eos; the labels are its last len(tokenize(label)) tokens (the label's tokens and eos)."""
    tokenizer = problem.tokenizer
    example = {"prompt": "Text: rates rise\nAnswer:", "target": "B"}
    inputs, targets = problem.collate([example], [0], training=True)
    whole = tokenizer(example["prompt"] + example["target"], add_special_tokens=False)["input_ids"]
    answer = len(tokenizer("B", add_special_tokens=False)["input_ids"]) + 1
    expected = [tokenizer.bos_token_id, *whole, tokenizer.eos_token_id]
    assert inputs["input_ids"][0].tolist() == expected
    assert targets[0].tolist() == [-100] * (len(expected) - answer) + expected[-answer:]
    # generation budget: the longest answer's tokens (no space before it) and eos
    assert problem.max_new_tokens == [
        max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in task.label_names) + 1
        for task in problem.stream.tasks
    ]


def test_evaluation_prompts_keep_their_last_tokens_and_carry_references(problem) -> None:
    tokenizer = problem.tokenizer
    long = {"prompt": " ".join(f"word{i}" for i in range(100)) + "\nAnswer:", "target": "A"}
    inputs, _ = problem.collate([long], [0], training=False)
    ids = tokenizer(long["prompt"], add_special_tokens=False)["input_ids"]
    budget = problem.prompt_budget
    # utils/utils.py line 65: truncation_side "left" (the prompt's end is kept)
    assert inputs["input_ids"][0].tolist() == [tokenizer.bos_token_id, *ids[-(budget - 1) :]]
    assert inputs["references"] == [("A", long["prompt"])]


def test_predict_scores_each_generation_with_the_tasks_metric(problem, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(
        problem, "generate", lambda *args: calls.append(args) or ["Es regnet.", "x"]
    )
    inputs = {"references": [("Es regnet.", "Es wird regnen."), ("y", "z")]}
    values = problem.predict(None, inputs, torch.tensor([1, 1]))
    assert calls[0][-1] is True  # verbatim: the generation as decoded
    assert values.tolist() == [
        sari("Es regnet.", "Es regnet.", "Es wird regnen."),
        sari("x", "y", "z"),
    ]
    monkeypatch.setattr(problem, "generate", lambda *args: ["A", " A"])
    values = problem.predict(None, {"references": [("A", ""), ("A", "")]}, torch.tensor([0, 0]))
    assert values.tolist() == [1.0, 0.0]


def test_generations_are_kept_as_decoded(problem) -> None:
    """inference/infer_single.py line 193: batch_decode(..., skip_special_tokens=True,
    clean_up_tokenization_spaces=False), nothing stripped or cut."""
    model = problem.build_model().eval()
    inputs, _ = problem.collate([{"prompt": "Answer:", "target": "A"}], [0], training=False)
    (verbatim,) = problem.generate(model, inputs, 12, (), True)
    output = model.encoder.generate(input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"],
                                    max_new_tokens=12, do_sample=False,
                                    pad_token_id=problem.pad, eos_token_id=problem.eos)  # fmt: skip
    continuation = output[0, inputs["input_ids"].shape[1] :]
    assert verbatim == problem.tokenizer.decode(
        continuation, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


# -- the recipe and a run -----------------------------------------------------------------------
def test_the_recipe_is_traces_script() -> None:
    from cl_lora.experiment import resolve_config
    from cl_lora.run import build_parser, config_from_command_line

    config = resolve_config(
        config_from_command_line(build_parser().parse_args(["--recipe", "trace"]))
    )
    assert config.stream == "trace"
    # scripts/train_lora.sh lines 27-46 (LLaMA-2-7B-Chat, srun --gres=gpu:8):
    # --per_device_train_batch_size 1 --gradient_accumulation_steps 8 on 8 GPUs
    assert (config.batch_size, config.grad_accumulation) == (1 * 8 * 8, 8)
    # --learning_rate 1e-4 --weight_decay 0. --num_warmup_steps 0 --seed 1234; the
    # --lr_scheduler_type cosine flag is never used: training/main.py lines 400-403 build
    # get_constant_schedule_with_warmup(optimizer, num_warmup_steps=0)
    assert (config.lr, config.weight_decay, config.warmup_steps, config.seed) == (1e-4, 0, 0, 1234)
    assert config.lr_scheduler == "constant"
    # --num_train_epochs 5,3,7,5,3,5,5,7, the i-th task's (model/base_model.py line 111)
    epochs = [config.per_task.get(str(i), {}).get("epochs", config.epochs) for i in range(1, 9)]
    assert epochs == [5, 3, 7, 5, 3, 5, 5, 7]
    # --max_prompt_len 1024 --max_ans_len 512, cut from the left (utils/utils.py line 65)
    assert (config.max_length, config.max_new_tokens, config.prompt_keep) == (1536, 512, "end")
    # training/main.py lines 286-295: LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1), PEFT's
    # default LLaMA targets; utils/ds_utils.py lines 40-48: bf16, gradient_clipping 1.0
    assert (config.rank, config.alpha, config.lora_dropout) == (8, 32, 0.1)
    assert config.targets == ("q_proj", "v_proj")
    assert (config.precision, config.max_grad_norm, config.loss_average) == (
        "bf16",
        1.0,
        "examples",
    )


def test_a_run_with_the_recipe(layout: Path, tmp_path: Path, capsys) -> None:
    """``python -m cl_lora.run --stream trace --data-dir ... --recipe trace`` on a tiny Llama,
    shortened: result.json holds each task's TRACE metric, OP and BWT; a missing file exits 2
    with one line and writes nothing."""
    from llm_fixtures import tiny_llama_dir

    from cl_lora.run import main

    folder = tiny_llama_dir(tmp_path)
    common = ["--stream", "trace", "--data-dir", str(layout.parent), "--recipe", "trace",
              "--backbone", folder, "--max-train-per-task", "2", "--max-test-per-task", "2",
              "--max-new-tokens", "4", "--precision", "fp32", "--quiet",
              "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(common) == 0
    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert result["stream"]["name"] == "trace"
    assert result["config"]["recipe"].startswith("trace@sha256:")
    assert [(t["name"], t["metric"]) for t in result["tasks"]] == [
        (name, TASKS[name].metric) for name in ORDER
    ]
    assert (
        result["problem"]["text_format"] == "joined" and result["problem"]["prompt_keep"] == "end"
    )
    assert [t["epochs"] for t in result["training"]] == [5, 3, 7, 5, 3, 5, 5, 7]
    # each task is evaluated once trained, as TRACE does (infer_single.py line 290)
    cells = [value for row in result["matrix"] for value in row if value is not None]
    assert len(cells) == 8 * 9 // 2 and all(0.0 <= value <= 1.0 for value in cells)
    scores = result["scores"][-1]
    assert "trace-sari" in scores[-1] and "trace-rouge-l" in scores[2]
    metrics = result["metrics"]
    assert metrics["acc"] == pytest.approx(sum(result["matrix"][-1]) / 8)  # OP
    assert metrics["bwt_trace"] == pytest.approx(metrics["bwt"] * 7 / 8)
    (layout / "MeetingBank" / "test.json").unlink()
    capsys.readouterr()
    assert main(common) == 2
    err = capsys.readouterr().err.strip()
    assert "MeetingBank/test.json" in err and len(err.splitlines()) == 1
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written for the failure


def test_likelihood_answers_are_refused_before_any_weights_load(layout: Path, capsys, monkeypatch):
    """TRACE's generative tasks have no options to rank: --answer-by likelihood is one line,
    before the backbone is loaded."""
    from cl_lora import experiment
    from cl_lora.run import main

    monkeypatch.setattr(experiment, "load_backbone", lambda *a, **k: pytest.fail("loaded"))
    argv = ["--stream", "trace", "--data-dir", str(layout), "--answer-by", "likelihood",
            "--output-dir", str(layout / "runs")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "free text" in err and "--answer-by" in err
