"""Vision: the timm ViT backbone, class-incremental heads, split streams, Hub loaders on local
files, the offline-vision stream and a whole CLI run on a tiny cached 'MNIST ViT'."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_vit, tiny_vit_backbone

from cl_lora import run, streams
from cl_lora.backbones import ContinualClassifier
from cl_lora.backbones.vit import MNIST_VIT, load_vit_backbone, mnist_vit_dir
from cl_lora.errors import BadInputError
from cl_lora.pretrain_mnist import normalize
from cl_lora.strategy import run_stream
from cl_lora.strategy.retention import RetentionProbe
from cl_lora.streams import StreamOptions, vision


def _pixels(count: int, seed: int = 0, side: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, side, side), dtype=np.uint8)


# -- backbone -------------------------------------------------------------------------------------
def test_vit_backbone_targets_preprocessing_and_features() -> None:
    backbone = tiny_vit_backbone()
    assert backbone.target_modules == [
        f"blocks.{b}.{layer}"
        for b in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]
    images = _pixels(3)
    inputs = backbone.collate([{"image": image} for image in images])  # arrays or PIL alike
    # timm's transform from the data config == the pretraining's direct normalization
    assert torch.allclose(inputs["pixel_values"], normalize(images), atol=1e-6)
    features = backbone.features(backbone.encoder, inputs)
    assert features.shape == (3, backbone.feature_dim) == (3, 32)
    assert backbone.knowledge_head is None and backbone.source["data_config"]["input_size"] == [
        1,
        28,
        28,
    ]


def test_vit_backbone_keeps_the_pretrained_head_frozen_for_its_knowledge() -> None:
    backbone = tiny_vit_backbone(knowledge="mnist")
    assert backbone.knowledge == "mnist"
    assert backbone.knowledge_head.out_features == 10
    assert not any(p.requires_grad for p in backbone.knowledge_head.parameters())
    assert not any("head" in name for name in backbone.target_modules)
    inputs = backbone.collate([{"image": image} for image in _pixels(2)])
    assert backbone.features(backbone.encoder, inputs).shape == (2, 32)  # pre-logits, no head


def test_load_vit_from_local_folder_and_weights_file(tmp_path: Path) -> None:
    from timm.models import save_for_hf

    model = tiny_vit(num_classes=10, seed=3)
    save_for_hf(model, tmp_path / "folder", safe_serialization=True)
    backbone = load_vit_backbone(str(tmp_path / "folder"))
    assert torch.equal(backbone.encoder.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert backbone.feature_dim == 32

    torch.save(model.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(BadInputError, match="NAME=FILE"):
        load_vit_backbone(str(tmp_path / "weights.pth"))
    with pytest.raises(BadInputError, match="unknown timm model"):
        load_vit_backbone("no_such_vit_model")
    with pytest.raises(BadInputError, match="does not exist"):
        load_vit_backbone(f"vit_tiny_patch16_224={tmp_path / 'missing.safetensors'}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    """No offline switches set, and the Hub unreachable; returns a fast one-line checker."""
    import huggingface_hub

    from cl_lora import hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)

    def fails_fast(call, match: str) -> None:
        start = time.perf_counter()
        with pytest.raises(BadInputError, match=match) as error:
            call()
        assert time.perf_counter() - start < 5 and "\n" not in str(error.value)

    return fails_fast


def test_hub_vit_without_network_fails_fast(no_network) -> None:
    import huggingface_hub

    no_network(
        lambda: load_vit_backbone("vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
        "cannot reach the Hugging Face Hub",
    )
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # restored


def test_mnist_vit_alias_without_cache_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CL_LORA_CACHE", str(tmp_path))
    assert mnist_vit_dir().parent == tmp_path
    with pytest.raises(BadInputError, match="python -m cl_lora.pretrain_mnist"):
        load_vit_backbone(MNIST_VIT)


# -- class-incremental head -----------------------------------------------------------------------
def test_class_incremental_head_masks_unseen_classes() -> None:
    backbone = tiny_vit_backbone()
    model = ContinualClassifier(backbone, shared_head=True, class_incremental=True)
    inputs = backbone.collate([{"image": image} for image in _pixels(6)])
    model.add_head(0, 6)  # the loop's "before" call: no task trained yet
    assert not model.has_head(0)
    model.add_head(0, 6, classes=(0, 1))
    assert model.has_head(0) and not model.has_head(1)
    with torch.no_grad():
        model.heads["shared"].bias.copy_(torch.tensor([0.0, 0.0, 50.0, 50.0, 50.0, 50.0]))
    logits = model(inputs, 0)
    assert logits.shape == (6, 6)
    assert set(logits.argmax(1).tolist()) <= {0, 1}  # unseen classes never win, whatever bias
    assert (logits[:, 2:] == torch.finfo(logits.dtype).min).all()

    # masked logits pass no gradient to their rows of the head
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1, 0, 1])).backward()
    grad = model.heads["shared"].weight.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() == 0

    model.add_head(1, 6, classes=(2, 3))
    assert model.has_head(1) and not model.has_head(2)
    assert model.seen_classes.tolist() == [True] * 4 + [False] * 2
    state = model.state_dict()
    assert state["tasks_seen"].item() == 2 and "seen_classes" in state
    with pytest.raises(ValueError):
        ContinualClassifier(backbone, shared_head=False, class_incremental=True)


# -- split streams --------------------------------------------------------------------------------
def _toy_split(classes: int, per_class: int, seed: int = 0) -> datasets.Dataset:
    labels = np.repeat(np.arange(classes), per_class)
    return vision.image_dataset(
        _pixels(len(labels), seed, side=8), labels, [f"c{i}" for i in range(classes)]
    )


def test_class_order_is_the_documented_seed() -> None:
    order = vision.class_order(100)
    assert order.tolist() == np.random.RandomState(1993).permutation(100).tolist()
    assert order[:5].tolist() == [68, 56, 78, 8, 23]  # iCaRL/PyCIL's CIFAR-100 order starts so


@pytest.mark.parametrize("scenario", ["class", "task", "domain"])
def test_split_by_class_labels_follow_the_scenario(scenario: str) -> None:
    names = [f"c{i}" for i in range(6)]
    train, test = _toy_split(6, 4), _toy_split(6, 2, seed=1)
    tasks = vision.split_by_class(
        train, test, names, 2, scenario, StreamOptions(max_train_per_task=6)
    )
    order = vision.class_order(6)
    assert len(tasks) == 3
    for index, task in enumerate(tasks):
        own = order[2 * index : 2 * index + 2]
        assert len(task.train) == 6 and len(task.test) == 4  # capped, and balanced
        if scenario == "class":
            assert task.label_names == tuple(names[c] for c in order)
            assert task.classes == (2 * index, 2 * index + 1)  # positions in the class order
        else:
            assert task.label_names == tuple(names[c] for c in own)
            assert task.classes == (0, 1)
        # every image really belongs to the task's classes: match pixels to the source rows
        source = {
            np.asarray(img).tobytes(): lbl
            for img, lbl in zip(train["image"], train["label"], strict=True)
        }
        for image, label in zip(task.train["image"], task.train["label"], strict=True):
            original = source[np.asarray(image).tobytes()]
            assert original in own
            position = list(order if scenario == "class" else own).index(original)
            assert label == position


def test_offline_vision_stream() -> None:
    stream = streams.build(
        "offline-vision", StreamOptions(max_train_per_task=20, max_test_per_task=10)
    )
    assert (stream.scenario, stream.modality, stream.shared_head) == ("class", "vision", True)
    assert stream.backbone == MNIST_VIT
    order = vision.class_order(10)
    names = [vision.ANIMALS[c] for c in order]
    assert [t.name for t in stream.tasks] == [f"{names[i]}-{names[i + 1]}" for i in range(0, 10, 2)]
    for index, task in enumerate(stream.tasks):
        assert task.classes == (2 * index, 2 * index + 1)
        assert (len(task.train), len(task.test)) == (20, 10)
        assert np.asarray(task.train[0]["image"]).shape == (28, 28)
    full = streams.build("offline-vision", StreamOptions(scenario="task"))
    assert not full.shared_head and full.scenario == "task"
    assert [(len(t.train), len(t.test)) for t in full.tasks] == [(1600, 400)] * 5
    assert {t.classes for t in full.tasks} == {(0, 1)}
    with pytest.raises(BadInputError, match="drop --data-dir"):
        streams.build("offline-vision", StreamOptions(data_dir=Path(".")))


def test_scenario_knob_rejects_what_a_stream_does_not_offer() -> None:
    with pytest.raises(BadInputError, match="task-incremental only"):
        streams.build("offline-text", StreamOptions(scenario="class", max_train_per_task=4))
    with pytest.raises(BadInputError, match="unknown scenario"):
        StreamOptions(scenario="online")


# -- Hub loaders on local files -------------------------------------------------------------------
def _cifar_layout(root: Path) -> None:
    """CIFAR-100 in the Hub's layout: parquet shards with img, fine_label, coarse_label."""
    names = [f"fine{i}" for i in range(100)]
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=names),
            "coarse_label": datasets.ClassLabel(num_classes=20),
        }
    )
    for split, per_class in (("train", 3), ("test", 1)):
        labels = np.repeat(np.arange(100), per_class)
        images = np.random.default_rng(per_class).integers(0, 256, (len(labels), 8, 8, 3), np.uint8)
        data = datasets.Dataset.from_dict(
            {"img": list(images), "fine_label": labels, "coarse_label": labels // 5},
            features=features,
        )
        (root / "cifar100").mkdir(parents=True, exist_ok=True)
        data.to_parquet(root / "cifar100" / f"{split}-00000-of-00001.parquet")


def test_split_cifar100_from_local_hub_layout(tmp_path: Path) -> None:
    _cifar_layout(tmp_path / "data")
    stream = streams.build("split-cifar100", StreamOptions(data_dir=tmp_path / "data"))
    assert (len(stream.tasks), stream.scenario, stream.modality) == (10, "class", "vision")
    order = vision.class_order(100)
    first = stream.tasks[0]
    assert (len(first.train), len(first.test)) == (30, 10)
    assert first.label_names[:3] == tuple(f"fine{c}" for c in order[:3])
    assert first.classes == tuple(range(10)) and stream.tasks[9].classes == tuple(range(90, 100))
    assert first.train[0]["image"].mode == "RGB"
    per_task = streams.build(
        "split-cifar100", StreamOptions(data_dir=tmp_path / "data", scenario="task")
    )
    assert per_task.tasks[3].classes == tuple(range(10)) and not per_task.shared_head


def test_imagenet_r_from_image_folder_and_hub_layout(tmp_path: Path) -> None:
    from PIL import Image

    wnids = [f"n{index:08d}" for index in range(200)]
    pixels = _pixels(3 * 200, side=4)
    for index, wnid in enumerate(wnids):
        (tmp_path / "folder" / wnid).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(pixels[3 * index + k]).save(tmp_path / "folder" / wnid / f"{k}.png")
    stream = streams.build("imagenet-r", StreamOptions(data_dir=tmp_path / "folder"))
    assert len(stream.tasks) == 10
    assert all((len(t.train), len(t.test)) == (40, 20) for t in stream.tasks)  # 2/1 per class
    order = vision.class_order(200)
    assert stream.tasks[0].label_names[0] == wnids[order[0]]

    hub = datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(p) for p in pixels],
            "wnid": [w for w in wnids for _ in range(3)],
            "class_name": [f"name of {w}" for w in wnids for _ in range(3)],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "wnid": datasets.Value("string"),
             "class_name": datasets.Value("string")}
        ),
    )  # fmt: skip
    (tmp_path / "hub" / "test").mkdir(parents=True)
    hub.to_parquet(tmp_path / "hub" / "test" / "test-00000-of-00001.parquet")
    from_hub = streams.build(
        "imagenet-r", StreamOptions(data_dir=tmp_path / "hub", scenario="task")
    )
    assert from_hub.tasks[0].label_names[0] == f"name of {wnids[order[0]]}"
    assert [len(t.test) for t in from_hub.tasks] == [20] * 10


@pytest.mark.parametrize("stream", ["split-cifar100", "imagenet-r"])
def test_hub_vision_streams_fail_fast_offline(stream: str, no_network) -> None:
    no_network(lambda: streams.build(stream), "--data-dir")


def test_local_folder_without_the_columns_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    datasets.Dataset.from_dict({"text": ["a"], "label": [0]}).to_parquet(
        tmp_path / "d" / "train-00000-of-00001.parquet"
    )
    datasets.Dataset.from_dict({"text": ["b"], "label": [0]}).to_parquet(
        tmp_path / "d" / "test-00000-of-00001.parquet"
    )
    with pytest.raises(BadInputError, match="lacks columns"):
        streams.build("split-cifar100", StreamOptions(data_dir=tmp_path / "d"))


# -- the ViT path end to end ----------------------------------------------------------------------
def test_class_incremental_run_on_a_tiny_vit() -> None:
    from conftest import make_strategy

    stream = streams.build(
        "offline-vision", StreamOptions(max_train_per_task=16, max_test_per_task=8)
    )
    stream = streams.Stream("tiny-vision", stream.tasks[:3], "class", "vision", shared_head=True)
    backbone = tiny_vit_backbone()
    strategy = make_strategy(backbone, stream, init="pissa")
    probe = RetentionProbe(stream.tasks[0], backbone.collate)  # a stand-in probe task
    outcome = run_stream(strategy, probe=probe)
    matrix = outcome.matrix
    assert np.isnan(matrix[np.triu_indices(3, k=1)]).all()  # not scored before it is trained
    assert np.isfinite(matrix[np.tril_indices(3)]).all()
    assert outcome.before == [None] * 3
    assert len(outcome.retention) == 4
    assert int(strategy.model.tasks_seen) == 3


def test_cli_offline_vision_on_a_cached_tiny_vit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The mnist-vit alias reads the cache; the result has class-incremental R and retention."""
    from timm.models import save_for_hf

    monkeypatch.setenv("CL_LORA_CACHE", str(tmp_path / "cache"))
    save_for_hf(tiny_vit(num_classes=10), mnist_vit_dir(), safe_serialization=True)
    code = run.main(
        ["--stream", "offline-vision", "--init", "pissa", "--rank", "2", "--epochs", "1",
         "--max-train-per-task", "8", "--max-test-per-task", "4", "--quiet",
         "--output-dir", str(tmp_path / "runs")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert result["config"]["backbone"] is None  # as given: the stream's default, resolved to
    assert result["backbone"]["name"] == MNIST_VIT and result["stream"]["scenario"] == "class"
    retention = result["retention"]
    assert retention["probe"] == "mnist" and retention["head"] == "pretrained"
    assert len(retention["curve"]) == 6 and retention["test_size"] == 4  # capped like tasks
    assert retention["drop"] == pytest.approx(retention["curve"][0] - retention["curve"][-1])
    matrix = np.array(result["matrix"], dtype=float)
    assert np.isnan(matrix[0, 1]) and np.isfinite(matrix[4]).all()
    assert "retention" in out and "probe mnist, pretrained head" in out
