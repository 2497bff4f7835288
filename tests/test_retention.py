"""Pretrained-knowledge retention: the probe head, the probe's scores in the loop, the curve's
summary, and the knowledge probes of each modality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_strategy, tiny_vit_backbone
from sklearn.linear_model import LogisticRegression

from cl_lora import streams
from cl_lora.backbones import ContinualClassifier
from cl_lora.metrics import retention_summary
from cl_lora.strategy import run_stream
from cl_lora.strategy.retention import RetentionProbe, fit_linear_probe
from cl_lora.streams import Task
from cl_lora.streams.base import to_dataset


@pytest.mark.parametrize("classes", [2, 4])
def test_linear_probe_predicts_as_the_fitted_logistic_regression(classes: int) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(200) % classes
    features = rng.normal(size=(200, 6)) * [1, 10, 100, 1, 1, 1] + labels[:, None] * 0.7 + 5
    head = fit_linear_probe(features, labels, classes + 1)  # one label absent from the data
    mean, std = features.mean(0), features.std(0) + 1e-6
    reference = LogisticRegression(max_iter=2000).fit((features - mean) / std, labels)
    test = rng.normal(size=(50, 6)) * [1, 10, 100, 1, 1, 1] + 5
    ours = head(torch.from_numpy(test).float()).argmax(1).numpy()
    np.testing.assert_array_equal(ours, reference.predict((test - mean) / std))
    assert classes not in ours  # the absent label never wins
    assert not any(p.requires_grad for p in head.parameters())


def test_retention_summary() -> None:
    summary = retention_summary([0.9, 0.8, 0.85, 0.7])
    assert summary["curve"] == [0.9, 0.8, 0.85, 0.7]
    assert summary["drop"] == pytest.approx(0.2) and summary["max_drop"] == pytest.approx(0.2)
    assert retention_summary([0.5, 0.6])["drop"] == pytest.approx(-0.1)
    for curve in ([], [0.9], [0.9, float("nan")], [0.9, None]):
        assert retention_summary(curve)["drop"] is None


def _probe_task() -> Task:
    """Cue-word sentiment, learnable from the tiny BERT's random features by a linear head."""
    texts = [f"{'great' if i % 2 else 'awful'} film number {i}" for i in range(80)]
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(80)]})
    names = ("neg", "pos")
    return Task("cue-probe", to_dataset(frame[:60], names), to_dataset(frame[60:], names),
                names, "accuracy")  # fmt: skip


def test_fitted_probe_scores_the_frozen_head_on_current_features(backbone) -> None:
    model = ContinualClassifier(backbone, shared_head=False)
    probe = RetentionProbe.for_backbone(_probe_task(), backbone, batch_size=16)
    assert probe.head is None
    before = probe.start(model)
    assert probe.head_source == "fitted" and probe.fit_examples == 60
    assert before > 0.9  # the cue word is linearly readable from the features
    assert probe.score(model) == before  # same encoder, same head: same score
    head = [p.clone() for p in probe.head.parameters()]
    with torch.no_grad():  # wreck the encoder: the frozen head no longer reads it
        for parameter in model.encoder.parameters():
            parameter.copy_(torch.randn_like(parameter))
    assert probe.score(model) < before
    assert all(torch.equal(a, b) for a, b in zip(head, probe.head.parameters(), strict=True))
    record = probe.record([before, 0.5])
    assert record["probe"] == "cue-probe" and record["drop"] == pytest.approx(before - 0.5)


def test_pretrained_head_is_used_for_its_own_knowledge() -> None:
    probe_task = streams.knowledge_probe("vision")
    assert probe_task.name == "mnist"
    assert (len(probe_task.train), len(probe_task.test)) == (1000, 2000)
    assert np.bincount(probe_task.test["label"]).tolist() == [200] * 10
    assert np.asarray(probe_task.test[0]["image"]).shape == (28, 28)
    backbone = tiny_vit_backbone(knowledge="mnist")
    probe = RetentionProbe.for_backbone(probe_task, backbone)
    assert probe.head is backbone.knowledge_head and probe.head_source == "pretrained"
    other = RetentionProbe.for_backbone(probe_task, tiny_vit_backbone())
    assert other.head is None and other.head_source == "fitted"
    capped = RetentionProbe.for_backbone(probe_task, backbone, max_fit=20, max_test=30)
    assert (len(capped.task.train), len(capped.task.test)) == (20, 30)
    assert np.bincount(capped.task.test["label"]).tolist() == [3] * 10


def test_pretrained_head_probe_equals_the_model_with_its_head() -> None:
    """Probe score with the kept head == accuracy of the original timm model on those images."""
    from conftest import tiny_vit

    from cl_lora.pretrain_mnist import normalize

    task = streams.knowledge_probe("vision")
    full = tiny_vit(num_classes=10)
    backbone = tiny_vit_backbone(knowledge="mnist")  # same seed: the same weights
    probe = RetentionProbe.for_backbone(task, backbone, batch_size=500)
    model = ContinualClassifier(backbone, shared_head=True)
    images = np.stack([np.asarray(image) for image in task.test["image"]])
    with torch.no_grad():
        expected = full(normalize(images)).argmax(1).numpy() == np.array(task.test["label"])
    assert probe.start(model) == pytest.approx(expected.mean())


def test_loop_scores_the_probe_before_and_after_every_task(backbone, toy_stream) -> None:
    stream = toy_stream()
    strategy = make_strategy(backbone, stream)
    probe = RetentionProbe(_probe_task(), backbone.collate, batch_size=16)
    outcome = run_stream(strategy, probe=probe)
    assert len(outcome.retention) == len(stream.tasks) + 1
    assert all(0.0 <= value <= 1.0 for value in outcome.retention)


def test_the_first_probe_score_runs_on_the_run_device(backbone, toy_stream, monkeypatch) -> None:
    """The score before the first task runs after the model is moved to the run's device (a
    7B generation on the CPU would crawl, and on other hardware than the later points)."""
    strategy = make_strategy(backbone, toy_stream(tasks=1))
    moved = []
    to = strategy.model.to
    monkeypatch.setattr(strategy.model, "to", lambda *a, **k: moved.append(a) or to(*a, **k))
    probe = RetentionProbe(_probe_task(), backbone.collate, batch_size=16)
    started = []
    start = probe.start
    monkeypatch.setattr(probe, "start", lambda model: started.append(list(moved)) or start(model))
    run_stream(strategy, probe=probe)
    assert started == [[(strategy.device,)]]


def test_probing_does_not_change_what_the_stream_trains(toy_stream) -> None:
    from conftest import tiny_backbone

    stream = toy_stream()
    torch.manual_seed(0)
    plain = run_stream(make_strategy(tiny_backbone(), stream)).matrix
    torch.manual_seed(0)
    backbone = tiny_backbone()
    probe = RetentionProbe(_probe_task(), backbone.collate, batch_size=16)
    probed = run_stream(make_strategy(backbone, stream), probe=probe).matrix
    np.testing.assert_array_equal(probed, plain)


def test_text_knowledge_probe_is_outside_the_stream() -> None:
    probe = streams.knowledge_probe("text")
    stream = streams.build("offline-text", streams.StreamOptions(max_train_per_task=50))
    probe_texts = set(probe.test["text"])
    assert probe.name == "rotten-tomatoes"
    assert not any(probe_texts & set(task.test["text"]) for task in stream.tasks)
