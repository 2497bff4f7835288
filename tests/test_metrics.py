"""Hand-computed checks of cl_lora.metrics.summarize (indices 0-based, as in the code)."""

import math

import pytest

from cl_lora.metrics import summarize

NAN = math.nan
KEYS = {
    "acc",
    "acc_pooled",
    "avg_incremental_acc",
    "learning_acc",
    "bwt",
    "bwt_trace",
    "forgetting",
    "fwt",
    "running_acc",
    "per_task_forgetting",
    "undefined_reasons",
}

# Task-incremental: per-task heads, so nothing is evaluated before its task (upper triangle NaN).
TASK_INCREMENTAL = [
    [0.9, NAN, NAN],
    [0.8, 0.7, NAN],
    [0.6, 0.65, 0.5],
]


def approx(values):
    return pytest.approx(values, abs=1e-12)


def test_task_incremental_lower_triangle():
    m = summarize(TASK_INCREMENTAL)
    assert set(m) == KEYS
    # acc = (0.6 + 0.65 + 0.5) / 3 = 1.75 / 3
    assert m["acc"] == approx(1.75 / 3)
    # A_0 = 0.9; A_1 = (0.8 + 0.7) / 2 = 0.75; A_2 = 1.75 / 3
    assert m["running_acc"] == approx([0.9, 0.75, 1.75 / 3])
    # (0.9 + 0.75 + 1.75/3) / 3
    assert m["avg_incremental_acc"] == approx((0.9 + 0.75 + 1.75 / 3) / 3)
    # (0.9 + 0.7 + 0.5) / 3 = 0.7
    assert m["learning_acc"] == approx(0.7)
    # ((0.6 - 0.9) + (0.65 - 0.7)) / 2 = -0.175
    assert m["bwt"] == approx(-0.175)
    # f_0 = max(0.9, 0.8) - 0.6 = 0.3; f_1 = max(NaN skipped, 0.7) - 0.65 = 0.05; mean 0.175
    assert m["per_task_forgetting"] == approx([0.3, 0.05])
    assert m["forgetting"] == approx(0.175)
    assert m["fwt"] is None
    assert "head" in m["undefined_reasons"]["fwt"]
    assert set(m["undefined_reasons"]) == {"fwt", "acc_pooled"}  # no test sizes given


FULL = [
    [0.5, 0.3, 0.2],
    [0.7, 0.8, 0.4],
    [0.6, 0.6, 0.9],
]


def test_full_matrix_with_b_and_forgetting_max_off_diagonal():
    m = summarize(FULL, b=[0.1, 0.2, 0.3], test_sizes=[1, 1, 2])
    # acc = (0.6 + 0.6 + 0.9) / 3 = 0.7
    assert m["acc"] == approx(0.7)
    # A = [0.5, (0.7 + 0.8) / 2 = 0.75, 0.7]; mean = 1.95 / 3 = 0.65
    assert m["running_acc"] == approx([0.5, 0.75, 0.7])
    assert m["avg_incremental_acc"] == approx(0.65)
    # (0.5 + 0.8 + 0.9) / 3
    assert m["learning_acc"] == approx(2.2 / 3)
    # ((0.6 - 0.5) + (0.6 - 0.8)) / 2 = -0.05
    assert m["bwt"] == approx(-0.05)
    # f_0 = max(0.5, 0.7) - 0.6 = 0.1 (max at row 1 > j = 0); f_1 = max(0.3, 0.8) - 0.6 = 0.2
    # mean 0.15, while -BWT = 0.05 (Avalanche's per-task R[j][j] - R[T-1][j]: -0.1, 0.2)
    assert m["per_task_forgetting"] == approx([0.1, 0.2])
    assert m["forgetting"] == approx(0.15)
    assert m["forgetting"] != approx(-m["bwt"])
    # ((R[0][1] - b_1) + (R[1][2] - b_2)) / 2 = ((0.3 - 0.2) + (0.4 - 0.3)) / 2 = 0.1
    assert m["fwt"] == approx(0.1)
    assert m["acc_pooled"] == approx((0.6 + 0.6 + 2 * 0.9) / 4)
    assert m["undefined_reasons"] == {}


def test_forgetting_counts_rows_before_the_task_where_evaluated():
    R = [row[:] for row in FULL]
    R[0][1] = 0.95  # task 1 scored higher before it was trained
    # f_1 = max(0.95, 0.8) - 0.6 = 0.35; f_0 = 0.1 as above; mean 0.225
    m = summarize(R)
    assert m["per_task_forgetting"] == approx([0.1, 0.35])
    assert m["forgetting"] == approx(0.225)


def test_fwt_needs_b():
    m = summarize(FULL)
    assert m["fwt"] is None
    assert "b" in m["undefined_reasons"]["fwt"]
    m = summarize(FULL, b=[None, 0.2, NAN])
    assert m["fwt"] is None
    assert "b[2]" in m["undefined_reasons"]["fwt"]
    # b_0 is never used: ((0.3 - 0.2) + (0.4 - 0.3)) / 2
    assert summarize(FULL, b=[None, 0.2, 0.3])["fwt"] == approx(0.1)


def test_single_task():
    m = summarize([[0.8]], b=[0.1])
    assert m["acc"] == m["learning_acc"] == m["avg_incremental_acc"] == approx(0.8)
    assert m["running_acc"] == approx([0.8])
    assert m["per_task_forgetting"] == []
    for name in ("bwt", "forgetting", "fwt"):
        assert m[name] is None
        assert "two tasks" in m["undefined_reasons"][name]


def test_missing_entry_in_lower_triangle():
    R = [row[:] for row in TASK_INCREMENTAL]
    R[1][0] = None  # task 0 not evaluated after task 1
    m = summarize(R)
    # unaffected: the last row and the diagonal are complete
    assert m["acc"] == approx(1.75 / 3)
    assert m["learning_acc"] == approx(0.7)
    assert m["bwt"] == approx(-0.175)
    # A_1 needs R[1][0]
    assert m["running_acc"][1] is None
    assert m["avg_incremental_acc"] is None
    assert "[1]" in m["undefined_reasons"]["avg_incremental_acc"]
    # f_0 needs R[1][0] (a row after task 0 was trained); f_1 = 0.7 - 0.65 is still known
    assert m["per_task_forgetting"][0] is None
    assert m["per_task_forgetting"][1] == approx(0.05)
    assert m["forgetting"] is None
    assert "R[1][0]" in m["undefined_reasons"]["forgetting"]


def test_missing_entry_in_last_row():
    R = [row[:] for row in FULL]
    R[2][1] = NAN
    m = summarize(R, b=[0.1, 0.2, 0.3])
    for name in ("acc", "bwt", "forgetting", "avg_incremental_acc"):
        assert m[name] is None
    assert "R[2][1]" in m["undefined_reasons"]["acc"]
    assert "R[2][1]" in m["undefined_reasons"]["bwt"]
    assert m["learning_acc"] == approx(2.2 / 3)
    assert m["fwt"] == approx(0.1)  # uses R[0][1], R[1][2] only


@pytest.mark.parametrize(
    "R, b",
    [
        ([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], None),  # not square
        ([0.1, 0.2], None),  # not a matrix
        ([], None),  # no tasks
        (FULL, [0.1, 0.2]),  # b too short
    ],
)
def test_validation(R, b):
    with pytest.raises(ValueError):
        summarize(R, b)


def test_pooled_accuracy_weighs_tasks_by_their_test_examples():
    # O-LoRA's run_uie_lora.py reports exact match over all test examples at once
    # (compute_metrics(predictions=decoded_preds, references=...) on the whole test set, line 481),
    # i.e. sum_j n_j R[T-1][j] / sum_j n_j
    m = summarize(TASK_INCREMENTAL, test_sizes=[100, 300, 600])
    assert m["acc_pooled"] == approx((0.6 * 100 + 0.65 * 300 + 0.5 * 600) / 1000)
    assert m["acc"] == approx(1.75 / 3)  # the per-task mean stays as it was
    # equal test sizes: pooled == mean (O-LoRA's 4-task orders, 7,600 test examples each)
    assert summarize(TASK_INCREMENTAL, test_sizes=[7600] * 3)["acc_pooled"] == approx(1.75 / 3)


def test_pooled_accuracy_is_undefined_without_sizes_or_a_full_last_row():
    m = summarize(TASK_INCREMENTAL)
    assert m["acc_pooled"] is None and "test sizes" in m["undefined_reasons"]["acc_pooled"]
    partial = [[0.9, NAN], [NAN, 0.7]]
    m = summarize(partial, test_sizes=[10, 10])
    assert m["acc_pooled"] is None and "R[1][0]" in m["undefined_reasons"]["acc_pooled"]
