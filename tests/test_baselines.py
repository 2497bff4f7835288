"""Each baseline's and plugin's defining property, on the tiny BERT and the toy stream."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import ExtraLoss, make_strategy, tiny_backbone

from cl_lora.baselines import BASELINES
from cl_lora.baselines.inflora import (
    OFFICIAL_SCALE,
    InfLoRAInit,
    extend_basis,
    extend_basis_official,
    rising_threshold,
)
from cl_lora.baselines.o_lora import orthogonality_penalty
from cl_lora.errors import BadInputError
from cl_lora.lora import ADAPTER, lora_layers
from cl_lora.metrics import summarize
from cl_lora.plugins import PLUGINS
from cl_lora.run import main
from cl_lora.strategy import run_stream
from cl_lora.strategy.experiences import to_benchmark

QUERY = "encoder.layer.0.attention.self.query"


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """The tiny BERT's random weights and the replay memory draw from the global generator."""
    torch.manual_seed(0)


def baseline_strategy(name: str, stream, epochs: int = 1, **args):
    return make_strategy(tiny_backbone(), stream, epochs=epochs, baseline=name, baseline_args=args)


# -- o-lora ---------------------------------------------------------------------------------
def test_o_lora_penalty_is_zero_for_orthogonal_subspaces_and_positive_otherwise() -> None:
    basis = torch.linalg.qr(torch.randn(16, 16)).Q
    earlier = {"layer": basis[:, :4].T}  # rows: the earlier tasks' A
    orthogonal = {"layer": basis[:, 4:8].T}
    assert orthogonality_penalty(earlier, orthogonal).item() < 1e-5  # float32 round-off, summed
    assert orthogonality_penalty(earlier, orthogonal, "squared").item() < 1e-10
    overlapping = basis[:, 3:7].T
    assert orthogonality_penalty(earlier, {"layer": overlapping}).item() == pytest.approx(1.0)
    assert orthogonality_penalty(earlier, {"other": overlapping}).item() == 0.0


def test_o_lora_penalty_is_the_official_abs_sum_by_default() -> None:
    """cmnfriend/O-LoRA src/uie_trainer_lora.py: torch.abs(torch.mm(A_prev, A_new.T)).sum();
    the paper's squared form is the option, and its pull is much weaker on small overlaps."""
    earlier = {"q": torch.tensor([[0.6, 0.8, 0.0]])}
    current = {"q": torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], requires_grad=True)}
    assert orthogonality_penalty(earlier, current).item() == pytest.approx(0.6 + 0.8)
    assert orthogonality_penalty(earlier, current, "squared").item() == pytest.approx(1.0)
    assert BASELINES.get("o-lora").resolve_args({})["penalty"] == "abs"
    with pytest.raises(BadInputError, match="choose one of abs, squared"):
        BASELINES.get("o-lora").resolve_args({"penalty": "l1"})
    small = {"q": torch.tensor([[0.02, 0.0, 0.0]], requires_grad=True)}  # overlap 0.012
    (grad_abs,) = torch.autograd.grad(orthogonality_penalty(earlier, small), small["q"])
    (grad_sq,) = torch.autograd.grad(orthogonality_penalty(earlier, small, "squared"), small["q"])
    assert grad_abs.norm() / grad_sq.norm() == pytest.approx(1 / (2 * 0.012))


def test_o_lora_keeps_earlier_A_and_pushes_the_new_A_away(toy_stream) -> None:
    stream = toy_stream()
    strategy = baseline_strategy("o-lora", stream, epochs=3, lambda_orth=50.0)
    overlap = {}

    def after_task(i, outcome) -> None:
        if i == 1:
            new_a = lora_layers(strategy.model.encoder)[QUERY].lora_A[ADAPTER].weight
            earlier = strategy.earlier_A[QUERY]
            overlap["trained"] = orthogonality_penalty({"q": earlier}, {"q": new_a}).item()

    run_stream(strategy, on_task_end=after_task)
    assert strategy.earlier_A[QUERY].shape == (2 * 2, 32)  # tasks 0 and 1, rank 2 each
    # the same run without the penalty ends far less orthogonal
    free = baseline_strategy("o-lora", stream, epochs=3, lambda_orth=0.0)
    free_overlap = {}

    def after_free_task(i, outcome) -> None:
        if i == 1:
            new_a = lora_layers(free.model.encoder)[QUERY].lora_A[ADAPTER].weight
            free_overlap["trained"] = orthogonality_penalty(
                {"q": free.earlier_A[QUERY]}, {"q": new_a}
            ).item()

    run_stream(free, on_task_end=after_free_task)
    assert overlap["trained"] < 0.5 * free_overlap["trained"]


# -- frozen / seq-ft / seq-lora ---------------------------------------------------------------
def test_frozen_leaves_the_backbone_bit_identical_and_forgets_nothing(toy_stream) -> None:
    strategy = baseline_strategy("frozen", toy_stream(), epochs=2)
    before = copy.deepcopy(strategy.model.encoder.state_dict())
    outcome = run_stream(strategy)
    after = strategy.model.encoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not lora_layers(strategy.model.encoder)
    assert summarize(outcome.matrix)["forgetting"] == 0.0
    assert outcome.trainable_params == [66, 66, 66]  # one 32 -> 2 head per task


def test_seq_ft_trains_every_encoder_weight_without_lora(toy_stream) -> None:
    strategy = baseline_strategy("seq-ft", toy_stream(), encoder_lr=1e-3)
    before = copy.deepcopy(strategy.model.encoder.state_dict())
    outcome = run_stream(strategy)
    assert not lora_layers(strategy.model.encoder)
    after = strategy.model.encoder.state_dict()
    for key in ("embeddings.word_embeddings.weight", f"{QUERY}.weight"):
        assert not torch.equal(before[key], after[key]), key
    total = sum(p.numel() for p in strategy.model.encoder.parameters())
    assert outcome.trainable_params[0] == total + 66


def test_seq_lora_never_reinitializes_or_merges(toy_stream) -> None:
    strategy = baseline_strategy("seq-lora", toy_stream())
    seen = []

    def after_task(i, outcome) -> None:
        layer = lora_layers(strategy.model.encoder)[QUERY]
        seen.append(
            (layer.lora_A[ADAPTER].weight.detach().clone(), layer.base_layer.weight.clone())
        )

    class AtTaskStart(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs) -> None:
            layer = lora_layers(strategy.model.encoder)[QUERY]
            starts.append(layer.lora_A[ADAPTER].weight.detach().clone())

    starts: list[torch.Tensor] = []
    strategy.plugins.insert(0, AtTaskStart())
    run_stream(strategy, on_task_end=after_task)
    # each task starts exactly where the previous one ended: the same adapter, still training
    for task in (1, 2):
        assert torch.equal(starts[task], seen[task - 1][0])
        assert not torch.equal(seen[task][0], seen[task - 1][0])
    # and nothing is merged: the frozen base weight is the pretrained one throughout
    assert all(torch.equal(seen[0][1], base) for _, base in seen)


# -- joint ------------------------------------------------------------------------------------
def test_joint_trains_once_on_all_tasks_and_fills_the_last_row(toy_stream) -> None:
    stream = toy_stream()
    strategy = baseline_strategy("joint", stream, epochs=4)
    batches_tasks = set()

    class SeeTasks(SupervisedPlugin):
        def after_forward(self, strategy, **kwargs) -> None:
            batches_tasks.update(strategy.mb_task_id.tolist())

    strategy.plugins.insert(0, SeeTasks())
    outcome = run_stream(strategy)
    assert np.isnan(outcome.matrix[:2]).all()
    assert not np.isnan(outcome.matrix[2]).any()
    assert batches_tasks == {0, 1, 2}  # one training phase over the union
    assert outcome.trainable_params[:2] == [0, 0]
    assert (outcome.matrix[2] >= 0.75).all(), outcome.matrix
    metrics = summarize(outcome.matrix)
    assert metrics["acc"] is not None
    assert metrics["bwt"] is None and "R[0][0]" in metrics["undefined_reasons"]["bwt"]


def test_mixed_task_batches_pad_narrower_heads_with_minus_inf(toy_stream) -> None:
    strategy = make_strategy(tiny_backbone(), toy_stream())
    model = strategy.model
    model.add_head(0, 2)
    model.add_head(1, 5)
    inputs = strategy.backbone.collate([{"text": "a b"}, {"text": "c"}])
    logits = model(inputs, torch.tensor([0, 1]))
    assert logits.shape == (2, 5)
    assert torch.isinf(logits[0, 2:]).all() and torch.isfinite(logits[1]).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 4]))
    loss.backward()
    assert torch.isfinite(loss)


# -- inflora ----------------------------------------------------------------------------------
def test_extend_basis_keeps_the_asked_energy() -> None:
    x = torch.randn(200, 8) * torch.tensor([10.0, 5, 1, 0.1, 0.1, 0.1, 0.1, 0.1])
    cov = x.T @ x
    basis = extend_basis(None, cov, threshold=0.95, max_dim=6)
    kept = torch.trace(basis.T @ cov.double() @ basis) / torch.trace(cov)
    assert kept >= 0.95 and basis.shape[1] <= 3
    assert torch.allclose(basis.T @ basis, torch.eye(basis.shape[1], dtype=basis.dtype))
    # a second task's directions are added outside the first basis, and the cap holds
    grown = extend_basis(basis, torch.eye(8) * 100.0, threshold=0.99, max_dim=6)
    assert grown.shape[1] == 6
    assert torch.allclose(grown[:, : basis.shape[1]].abs(), basis.abs(), atol=1e-6)


def test_inflora_official_rule_uses_the_squared_spectrum_and_a_rising_threshold() -> None:
    """liangyanshuo/InfLoRA methods/inflora.py update_DualGPM: energy of S**2, threshold
    (lame - lamb) * task / sessions + lamb, first task r = #(cumsum < threshold), at least 1."""
    cov = torch.diag(torch.tensor([10.0, 5, 1, 0.5, 0, 0, 0, 0]))
    # squared: 100, 25, 1, 0.25 -> cumulative 0.792, 0.990: one direction below 0.95
    official = extend_basis_official(None, cov, threshold=0.95, max_dim=6)
    assert official.shape[1] == 1 and official[0, 0].abs() == pytest.approx(1.0)
    # eigenvalues: 10, 5, 1, 0.5 -> cumulative 0.606, 0.909, 0.970: three directions
    assert extend_basis(None, cov, threshold=0.95, max_dim=6).shape[1] == 3
    assert rising_threshold(0.95, 1.0, 0, 4) == 0.95
    assert rising_threshold(0.95, 1.0, 1, 4) == pytest.approx(0.9625)
    # after task 1 of 4: C = diag(4, 3, 2, 1); e1 holds 16/30; adding 9/30 and 4/30 reaches
    # 0.967 >= 0.9625, so two directions join (e2, e3), none more
    second = torch.diag(torch.tensor([4.0, 3, 2, 1, 0, 0, 0, 0]))
    grown = extend_basis_official(official, second, rising_threshold(0.95, 1.0, 1, 4), 6)
    assert grown.shape[1] == 3
    assert torch.allclose(grown.abs().sum(1)[:4], torch.tensor([1.0, 1, 1, 0], dtype=grown.dtype))
    # the design: top left singular vectors of C - M M^T C, divided by sqrt(3)
    weight = torch.zeros(5, 8)
    factors = InfLoRAInit("official").factors(
        weight, rank=2, scale=1.0, stats={"input_cov": second, "subspace": official},
        generator=None,
    )  # fmt: skip
    assert torch.allclose(factors.A.norm(dim=1), torch.full((2,), OFFICIAL_SCALE))
    assert factors.A[:, 0].abs().max() < 1e-7  # nothing along the memory (e1)
    assert torch.allclose(factors.A.abs().sum(0)[1:3], torch.full((2,), OFFICIAL_SCALE))


def test_inflora_left_singular_vectors_by_eigh_equal_the_svds() -> None:
    """One symmetric eigensolve gives what the official code takes from an SVD of
    ``C - M M^T C``: the same spectrum (squared) and the same directions (up to sign)."""
    from cl_lora.baselines.inflora import left_singular

    x = torch.randn(300, 12, dtype=torch.float64) * torch.linspace(5, 0.1, 12, dtype=torch.float64)
    cov = x.T @ x
    basis = torch.linalg.qr(torch.randn(12, 3, dtype=torch.float64))[0]
    for memory in (None, basis):
        outside = cov if memory is None else cov - memory @ (memory.T @ cov)
        U, S, _ = torch.linalg.svd(outside)
        squares, vectors = left_singular(cov, memory)
        torch.testing.assert_close(squares, S.square(), atol=1e-8, rtol=1e-8)
        top = 12 if memory is None else 9  # below: the null space M spans, in any basis
        torch.testing.assert_close((vectors[:, :top].T @ U[:, :top]).abs().diagonal(),
                                   torch.ones(top, dtype=torch.float64))  # fmt: skip


def test_inflora_designs_once_per_shared_input(toy_stream, monkeypatch) -> None:
    """q/k/v read one input: per task and block, 4 designs (q/k/v, attention output,
    intermediate, output) for 6 layers."""
    designs = []
    design = InfLoRAInit._design
    monkeypatch.setattr(
        InfLoRAInit, "_design", lambda self, *args: designs.append(1) or design(self, *args)
    )
    run_stream(baseline_strategy("inflora", toy_stream(tasks=2)))
    assert len(designs) == 2 * 2 * 4


def test_inflora_designs_A_outside_earlier_tasks_inputs(toy_stream) -> None:
    strategy = baseline_strategy("inflora", toy_stream(), threshold=0.9)
    checked = []

    def after_task(i, outcome) -> None:
        layer = lora_layers(strategy.model.encoder)[QUERY]
        assert not layer.lora_A[ADAPTER].weight.requires_grad  # A is designed and frozen
        assert layer.lora_B[ADAPTER].weight.requires_grad
        if i > 0:
            basis = strategy.basis[QUERY]
            assert 0 < basis.shape[1] <= 32 - 2
            a = layer.lora_A[ADAPTER].weight.double()
            assert (a @ basis).abs().max() < 1e-5  # A_t M = 0
            checked.append(i)

    outcome = run_stream(strategy, on_task_end=after_task)
    assert checked == [1, 2]
    assert (
        outcome.trainable_params[0]
        == sum(
            layer.lora_B[ADAPTER].weight.numel()
            for layer in lora_layers(strategy.model.encoder).values()
        )
        + 66
    )


# -- plugins ----------------------------------------------------------------------------------
def test_ewc_anchors_the_merged_weights(toy_stream) -> None:
    ewc = PLUGINS.get("ewc").build({"ewc_lambda": 1e6})
    probe = ExtraLoss()
    strategy = make_strategy(tiny_backbone(), toy_stream(tasks=2), epochs=2, plugins=[ewc, probe])
    run_stream(strategy)
    assert ewc.importance[QUERY].sum() > 0
    assert all(extra == 0 for extra in probe.extra[0])  # no penalty on the first task
    # the new adapter starts at the anchor (penalty 0), then moving away costs
    assert probe.extra[1][0] == pytest.approx(0.0, abs=1e-6)
    assert max(probe.extra[1]) > 0


@pytest.mark.parametrize("heads", ["per-task", "shared"])
def test_ewc_penalty_is_the_sum_over_finished_tasks(heads, toy_stream) -> None:
    """What EWC keeps (F, G, H per weight, whatever the number of tasks) gives Avalanche's
    separate-mode penalty ``sum_e sum F_e (W_eff - W_anchor_e)^2``, with each task's anchor the
    weight its merge wrote and ``F_e`` its Fisher: checked on the third task."""
    from functools import partial

    from cl_lora.lora import adapter_delta
    from cl_lora.plugins.ewc import _layer_penalty

    ewc = PLUGINS.get("ewc").build({"ewc_lambda": 1.0})
    anchors, fishers, checks = [], [], []

    def effective(layer) -> torch.Tensor:
        weight = layer.get_base_layer().weight
        return weight.float() + adapter_delta(layer)

    class Compare(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs) -> None:
            if strategy.task_id < 2:
                return
            layer = lora_layers(strategy.model.encoder)[QUERY]
            with torch.no_grad():
                w = effective(layer)
                want = sum(
                    (f * (w - a).square()).sum() for f, a in zip(fishers, anchors, strict=True)
                )
                got = _layer_penalty(
                    partial(adapter_delta, layer),
                    ewc.importance[QUERY],
                    ewc.pull[QUERY],
                    ewc.offset[QUERY],
                )
            checks.append((got.item(), want.item()))

    stream = toy_stream(tasks=3, shared_head=heads == "shared")
    strategy = make_strategy(tiny_backbone(), stream, epochs=2, plugins=[ewc, Compare()])

    def after_task(i, outcome) -> None:
        layer = lora_layers(strategy.model.encoder)[QUERY]
        anchors.append(effective(layer).detach())
        fishers.append(ewc.importance[QUERY].clone() - sum(fishers))

    run_stream(strategy, on_task_end=after_task)
    assert len(checks) == 6 and checks[0][1] > 0  # 3 steps x 2 epochs; H alone at the start
    for got, want in checks:
        assert got == pytest.approx(want, rel=1e-4, abs=0)  # values are ~1e-11


class TeacherAtTaskStart(SupervisedPlugin):
    """Per task with a teacher: whether LwF's teacher shares the model's encoder, the largest
    difference between its head-0 logits and the (eval-mode) model's before the first step,
    and how far the teacher's logits on that batch moved by the task's end."""

    def __init__(self, lwf) -> None:
        super().__init__()
        self.lwf, self.seen, self.first = lwf, {}, None

    def _logits(self, model, x) -> torch.Tensor:
        with torch.no_grad():
            return model(x, None)[0]

    def before_backward(self, strategy, **kwargs) -> None:
        teacher = self.lwf.lwf.prev_model
        if teacher is None or strategy.task_id in self.seen:
            return
        strategy.model.eval()
        gap = self._logits(teacher, strategy.mb_x) - self._logits(strategy.model, strategy.mb_x)
        strategy.model.train()
        shared = getattr(teacher.encoder, "inner", None) is strategy.model.encoder
        self.first = (strategy.mb_x, self._logits(teacher, strategy.mb_x))
        self.seen[strategy.task_id] = [shared, gap.abs().max().item()]

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.first is not None:
            x, start = self.first
            moved = (self._logits(self.lwf.lwf.prev_model, x) - start).abs().max().item()
            self.seen[strategy.task_id].append(moved)
            self.first = None


@pytest.mark.parametrize(
    ("init", "baseline", "shared"), [("pissa", None, True), ("lora", "seq-lora", False)]
)
def test_lwf_teacher_is_the_model_at_the_task_start(init, baseline, shared, toy_stream) -> None:
    """A fresh adapter: the teacher is the model with it switched off (no copy) and computes
    what the model computes before its first step, however the adapter then trains; a run
    that keeps training one adapter (seq-lora) gets a copy of the model at the task's start."""
    lwf = PLUGINS.get("lwf").build({})
    check = TeacherAtTaskStart(lwf)
    strategy = make_strategy(
        tiny_backbone(), toy_stream(tasks=3), init, plugins=[lwf, check], baseline=baseline
    )
    run_stream(strategy)
    assert list(check.seen) == [1, 2]
    assert all(s == shared for s, _, _ in check.seen.values())
    assert max(gap for _, gap, _ in check.seen.values()) < 1e-5
    assert all(moved == 0 for _, _, moved in check.seen.values())  # training left it alone


def test_replay_mixes_earlier_tasks_into_the_batches(toy_stream) -> None:
    seen: dict[int, set[int]] = {}

    class SeeTasks(SupervisedPlugin):
        def after_forward(self, strategy, **kwargs) -> None:
            seen.setdefault(strategy.task_id, set()).update(strategy.mb_task_id.tolist())

    replay = PLUGINS.get("replay").build({"mem_size": 20})
    strategy = make_strategy(tiny_backbone(), toy_stream(), plugins=[replay, SeeTasks()])
    outcome = run_stream(strategy)
    assert seen == {0: {0}, 1: {0, 1}, 2: {0, 1, 2}}
    assert len(replay.storage_policy.buffer) == 20
    assert not np.isnan(np.diag(outcome.matrix)).any()


# -- registry and CLI -----------------------------------------------------------------------
def test_list_shows_baselines_and_plugins(capsys) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("seq-ft", "frozen", "joint", "seq-lora", "o-lora", "inflora", "ewc", "replay"):
        assert f"  {name} " in out
    assert "lambda_orth=0.5" in out and "mem_size=200" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline", "frozn"], "did you mean 'frozen'"),
        (["--plugin", "rplay"], "did you mean 'replay'"),
        (["--baseline", "frozen", "--plugin", "replay"], "drop one of them"),
        (["--baseline", "frozen", "--init", "pissa"], "drop --init"),
        (["--baseline", "inflora", "--calib", "probe"], "drop --calib"),
        (["--plugin", "replay", "--plugin-arg", "alpha=2"], "taken by none of the chosen"),
        (["--plugin", "replay", "--plugin-arg", "mem_size=many"], "is not a int"),
        (["--baseline-arg", "encoder_lr=1e-5"], "needs a --baseline"),
        (["--baseline", "o-lora", "--baseline-arg", "lambda=1"], "does not take lambda"),
        (["--plugin", "ewc", "--plugin-arg", "mode=sometimes"], "separate or online"),
    ],
)
def test_bad_method_choices_are_one_line_and_exit_2(argv, message, capsys, tmp_path) -> None:
    tiny = ["--max-train-per-task", "8", "--max-test-per-task", "4", "--quiet"]
    assert main([*argv, *tiny, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not list(tmp_path.rglob("result.json"))


def test_baseline_run_records_its_method(tmp_path, capsys) -> None:
    argv = ["--baseline", "frozen", "--stream", "offline-domains", "--max-train-per-task", "16"]
    argv += ["--max-test-per-task", "8", "--epochs", "1", "--quiet", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    (result_file,) = tmp_path.rglob("result.json")
    result = json.loads(result_file.read_text())
    assert result_file.parent.name.startswith("offline-domains-frozen-s0-")
    assert result["init"] is None
    assert result["config"]["baseline"] == "frozen" and result["config"]["init"] is None
    assert result["method"]["name"] == "frozen" and result["method"]["plugins"] == []
    assert result["trainable_params"] == [384 * 2 + 2] * 4  # the shared head only
    assert "frozen" in capsys.readouterr().out
    matrix = result["matrix"]  # shared head: scored up to the next task (what FWT reads)
    assert all(
        (v is not None) == (j <= i + 1) for i, row in enumerate(matrix) for j, v in enumerate(row)
    )


def test_joint_experiences_come_from_the_stream(toy_stream) -> None:
    """The union is rebuilt from the stream, so it does not depend on which tasks were seen."""
    stream = toy_stream()
    sizes = [len(exp.dataset) for exp in to_benchmark(stream).train_stream]
    strategy = baseline_strategy("joint", stream)
    strategy.experience = to_benchmark(stream).train_stream[2]
    strategy.train_dataset_adaptation()
    assert len(strategy.adapted_dataset) == sum(sizes)


def test_batches_mixing_single_texts_and_pairs_tokenize_as_each_alone() -> None:
    """Replay and joint batches mix tasks with and without a ``text_pair`` (offline-text)."""
    from transformers import AutoTokenizer

    from cl_lora.backbones.text import packaged_minilm_path, tokenize

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    pair = {"text": "is the sky blue", "text_pair": "the sky is blue on clear days"}
    single = {"text": "great movie"}
    mixed = tokenize(tokenizer, 64, [pair, single])
    for row, example in enumerate((pair, single)):
        alone = tokenize(tokenizer, 64, [example])
        length = int(alone["attention_mask"].sum())
        for key, value in mixed.items():
            assert torch.equal(value[row, :length], alone[key][0, :length]), key
        assert mixed["attention_mask"][row, length:].sum() == 0
