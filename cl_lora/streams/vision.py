"""Image streams: classes split into tasks, in the task-, domain- or class-incremental scenario.

A split stream cuts a labelled image dataset into tasks of ``k`` classes each, the classes in a
fixed order: ``numpy.random.RandomState(1993).permutation(C)``, the shuffled order of iCaRL and
PyCIL, on which the InfLoRA and CL-LoRA code bases build their split CIFAR-100 and ImageNet-R
tables. The order never depends on the run seed. The scenario (``--scenario``) decides labels and
heads:

- ``class`` (class-incremental): labels are the position of the class in that order
  (``0 .. C-1``); one shared head over all classes, logits of classes not seen yet are masked.
- ``task`` (task-incremental): labels ``0 .. k-1`` within each task, one head per task.
- ``domain`` (domain-incremental): labels ``0 .. k-1`` within each task, one shared ``k``-way head.

Streams (rows are ``{"image": PIL image, "label": int}``):

==================  ===============================================  =====  =======  =========
stream              data                                             tasks  classes  default
==================  ===============================================  =====  =======  =========
``offline-vision``  Animal-MNIST (packaged), 800 train / 200 test     5      2        class
                    per class
``split-cifar100``  CIFAR-100 (Hub ``uoft-cs/cifar100`` or            10     10       class
                    ``--data-dir``), official train/test
``imagenet-r``      ImageNet-R (Hub ``axiong/imagenet-r`` or          10     20       class
                    ``--data-dir``), 80/20 train/test per class
==================  ===============================================  =====  =======  =========

ImageNet-R ships one split; like the CODA-Prompt/InfLoRA protocol, each class is split 80/20 into
train and test, here with the fixed split seed 0. Its classes are the 200 WordNet ids, sorted.

The knowledge probe of vision streams is MNIST (:func:`mnist_probe`): what the offline MNIST ViT
was pretrained on, and for any other ViT a held-out dataset outside every stream.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from cl_lora.errors import BadInputError
from cl_lora.hub import load_hub_dataset, no_network_message, require_hub
from cl_lora.lazy import lazy_module
from cl_lora.streams.base import Stream, StreamOptions, Task
from cl_lora.streams.packaged import packaged_file
from cl_lora.streams.registry import register
from cl_lora.streams.sampling import SPLIT_SEED, balanced_sample, balanced_split

datasets = lazy_module("datasets")

CLASS_ORDER_SEED = 1993
ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
DIGITS = tuple(str(digit) for digit in range(10))
ANIMAL_TRAIN_PER_CLASS, ANIMAL_TEST_PER_CLASS = 800, 200
PROBE_TRAIN, PROBE_TEST = 1000, 2000
IMAGENET_R_TEST_FRACTION = 0.2
CIFAR100_HUB = "uoft-cs/cifar100"
IMAGENET_R_HUB = "axiong/imagenet-r"


def class_order(num_classes: int, seed: int = CLASS_ORDER_SEED) -> np.ndarray:
    """The documented class order: ``RandomState(seed).permutation(num_classes)``."""
    return np.random.RandomState(seed).permutation(num_classes)


def image_dataset(
    images: Sequence | np.ndarray, labels: Sequence[int], label_names: Sequence[str]
) -> datasets.Dataset:
    """A Dataset with an ``Image`` column ``image`` and a ``ClassLabel`` column ``label``."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(label_names))}
    )
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": [int(label) for label in labels]}, features=features
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars for quick in-memory dataset operations (relabelling, selecting)."""
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _relabel(split: datasets.Dataset, labels: np.ndarray, names: Sequence[str]) -> datasets.Dataset:
    """``split`` with its ``label`` column (if any) replaced by ``labels`` as a ClassLabel."""
    with _quiet():
        if "label" in split.column_names:
            split = split.remove_columns("label")
        labelled = split.add_column("label", [int(x) for x in labels])
        return labelled.cast_column("label", datasets.ClassLabel(names=list(names)))


def _task_labels(
    original: np.ndarray, classes: np.ndarray, order: np.ndarray, scenario: str
) -> np.ndarray:
    """Global position in the class order (class-incremental) or position within the task."""
    reference = order if scenario == "class" else classes
    position = {int(c): i for i, c in enumerate(reference)}
    return np.array([position[int(c)] for c in original], dtype=np.int64)


def split_by_class(
    train: datasets.Dataset,
    test: datasets.Dataset,
    class_names: Sequence[str],
    per_task: int,
    scenario: str,
    options: StreamOptions,
    task_name: str = "task-{index:02d}",
) -> tuple[Task, ...]:
    """Tasks of ``per_task`` classes in the documented order, labelled for ``scenario``.

    ``train``/``test`` hold ``image`` and an integer ``label`` (ids into ``class_names``). The
    caps of ``options`` draw class-balanced samples of each task's splits.
    """
    order = class_order(len(class_names))
    train_labels, test_labels = np.asarray(train["label"]), np.asarray(test["label"])
    tasks = []
    for index in range(len(order) // per_task):
        classes = order[index * per_task : (index + 1) * per_task]
        names = [class_names[c] for c in (order if scenario == "class" else classes)]
        splits = []
        for split, labels, cap in (
            (train, train_labels, options.max_train_per_task),
            (test, test_labels, options.max_test_per_task),
        ):
            rows = np.flatnonzero(np.isin(labels, classes))
            if cap is not None:
                local = _task_labels(labels[rows], classes, order, "task")
                rows = rows[np.sort(balanced_sample(local, cap, per_task))]
            new = _task_labels(labels[rows], classes, order, scenario)
            splits.append(_relabel(split.select(rows), new, names))
        if not len(splits[0]) or not len(splits[1]):
            raise BadInputError(
                f"classes {[class_names[c] for c in classes]} have no train or test images: "
                "the data folder is incomplete"
            )
        label = "-".join(class_names[c] for c in classes)
        tasks.append(
            Task(
                name=task_name.format(index=index + 1, classes=label),
                train=splits[0],
                test=splits[1],
                label_names=tuple(names),
                metric="accuracy",
            )
        )
    return tuple(tasks)


def _scenario(options: StreamOptions, default: str = "class") -> str:
    return options.scenario or default


def _split_stream(
    name: str, tasks: tuple[Task, ...], scenario: str, backbone: str | None = None
) -> Stream:
    return Stream(
        name,
        tasks,
        scenario=scenario,
        modality="vision",
        shared_head=scenario != "task",
        backbone=backbone,
    )


# -- packaged data: MNIST (the probe) and Animal-MNIST (offline-vision) -------------------------
@lru_cache(maxsize=1)
def mnist_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The packaged MNIST as uint8 ``(N, 28, 28)`` images and labels, per split.

    The pickle holds the classic 50k train / 10k validation / 10k test split as floats ``k/256``.
    """
    with gzip.open(packaged_file("mnist", "data/mnist.pkl.gz"), "rb") as handle:
        parts = pickle.load(handle, encoding="latin1")
    arrays = {}
    for split, (images, labels) in zip(("train", "validation", "test"), parts, strict=True):
        pixels = np.clip(np.round(images * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        arrays[split] = (pixels, labels.astype(np.int64))
    return arrays


def mnist_probe() -> Task:
    """MNIST, outside every stream: 1000 train (to fit a probe head, to calibrate) and a fixed
    class-balanced 2000 of the 10k test images (scored after every task)."""
    arrays = mnist_arrays()
    parts = []
    for split, size in (("train", PROBE_TRAIN), ("test", PROBE_TEST)):
        images, labels = arrays[split]
        rows = balanced_sample(labels, size, len(DIGITS))
        parts.append(image_dataset(images[rows], labels[rows], DIGITS))
    return Task("mnist", parts[0], parts[1], DIGITS, "accuracy")


def _animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    root = "data/Animal_MNIST"
    with gzip.open(packaged_file("animal_mnist", f"{root}/animal_data_version_3.gz")) as handle:
        images = pickle.load(handle)
    with gzip.open(packaged_file("animal_mnist", f"{root}/animal_label_version_3.gz")) as handle:
        labels = pickle.load(handle)
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


@register("offline-vision", "Animal-MNIST, 5 tasks of 2 classes, on the MNIST-pretrained ViT")
def build_offline_vision(options: StreamOptions) -> Stream:
    """Packaged Animal-MNIST split into 5 tasks of 2 classes (class-incremental by default).

    Each class is split once into 800 train and 200 test images (fixed split seed); the
    caps of ``options`` then sample each task's share.
    """
    if options.data_dir is not None:
        raise BadInputError("offline-vision reads only packaged data; drop --data-dir")
    images, labels = _animal_mnist()
    classes = len(ANIMALS)
    train, test = balanced_split(
        labels, ANIMAL_TRAIN_PER_CLASS * classes, ANIMAL_TEST_PER_CLASS * classes, classes
    )
    scenario = _scenario(options)
    tasks = split_by_class(
        image_dataset(images[train], labels[train], ANIMALS),
        image_dataset(images[test], labels[test], ANIMALS),
        ANIMALS,
        per_task=2,
        scenario=scenario,
        options=options,
        task_name="{classes}",
    )
    return _split_stream("offline-vision", tasks, scenario, backbone="mnist-vit")


# -- Hub streams ---------------------------------------------------------------------------------
def _from_hub(stream: str, hub_name: str, layout: str) -> datasets.DatasetDict:
    """``hub_name`` from the Hub, or a one-line error naming ``--data-dir`` in ``layout``."""
    message = no_network_message(stream, "its images", hub_name, f"a local copy ({layout})")
    require_hub(message)
    return load_hub_dataset(message, hub_name)


def _load_local(data_dir: Path, builder: str | None = None) -> datasets.DatasetDict:
    """A ``save_to_disk`` folder, a folder of data files in the Hub layout, or an image folder."""
    if not data_dir.is_dir():
        raise BadInputError(f"--data-dir {data_dir} is not a directory")
    try:
        if (data_dir / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(data_dir))
        if builder is not None:
            return datasets.load_dataset(builder, data_dir=str(data_dir))
        return datasets.load_dataset(str(data_dir))
    except (
        OSError,
        ValueError,
        FileNotFoundError,
        datasets.exceptions.DatasetGenerationError,
    ) as e:
        raise BadInputError(f"cannot read images from {data_dir}: {str(e).splitlines()[0]}") from e


def _columns(split: datasets.Dataset, image: str, label: str, where: str) -> None:
    missing = {image, label} - set(split.column_names)
    if missing:
        raise BadInputError(f"{where} lacks columns {sorted(missing)} (found {split.column_names})")


CIFAR_LAYOUT = "train and test splits with columns img and fine_label, as on the Hub"


def cifar100_splits(data_dir: Path | None) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """CIFAR-100 train and test (``image``, fine ``label``) and the 100 class names."""
    if data_dir is None:
        loaded = _from_hub("split-cifar100", CIFAR100_HUB, CIFAR_LAYOUT)
    else:
        loaded = _load_local(Path(data_dir))
    if not {"train", "test"} <= set(loaded):
        raise BadInputError(f"CIFAR-100 data has splits {sorted(loaded)}; expected {CIFAR_LAYOUT}")
    splits = []
    for split in ("train", "test"):
        _columns(loaded[split], "img", "fine_label", f"CIFAR-100 {split} split")
        part = loaded[split].select_columns(["img", "fine_label"])
        splits.append(part.rename_columns({"img": "image", "fine_label": "label"}))
    feature = splits[0].features["label"]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if names is None or len(names) != 100:
        raise BadInputError(f"CIFAR-100 fine_label must be a 100-class ClassLabel; {CIFAR_LAYOUT}")
    return splits[0], splits[1], names


IMAGENET_R_LAYOUT = (
    "the original imagenet-r folder (one folder per WordNet id), or the Hub layout with columns "
    "image, wnid and class_name"
)


def _fraction_split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a fixed-seed shuffle; the first ``round(fraction * n)`` rows are the test."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(fraction * len(members)))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def imagenet_r_splits(
    data_dir: Path | None,
) -> tuple[datasets.Dataset, datasets.Dataset, list[str]]:
    """ImageNet-R as train and test (80/20 per class) and the class names, in WordNet-id order."""
    if data_dir is None:
        loaded = _from_hub("imagenet-r", IMAGENET_R_HUB, IMAGENET_R_LAYOUT)
    else:
        data_dir = Path(data_dir)
        hub_layout = any(data_dir.rglob("*.parquet")) or (data_dir / "dataset_dict.json").is_file()
        loaded = _load_local(data_dir, None if hub_layout else "imagefolder")
    if not loaded:
        raise BadInputError(f"ImageNet-R data is empty; expected {IMAGENET_R_LAYOUT}")
    split = next(iter(loaded.values()))  # one split (the Hub's "test", a folder's "train")
    if "wnid" in split.column_names:  # the Hub layout
        _columns(split, "image", "wnid", "ImageNet-R data")
        wnids = np.asarray(split["wnid"])
        classes = sorted(set(wnids.tolist()))
        readable = dict(zip(wnids.tolist(), split["class_name"], strict=True))
        names = [readable[wnid] for wnid in classes]
        index = {wnid: i for i, wnid in enumerate(classes)}
        labels = np.array([index[w] for w in wnids], dtype=np.int64)
        split = _relabel(split.select_columns(["image"]), labels, names)
    else:  # an image folder: labels are the sorted folder names
        _columns(split, "image", "label", "ImageNet-R image folder")
        names = list(split.features["label"].names)
        labels = np.asarray(split["label"])
    if len(names) != 200:
        raise BadInputError(f"ImageNet-R has 200 classes, found {len(names)}; {IMAGENET_R_LAYOUT}")
    train, test = _fraction_split(labels, IMAGENET_R_TEST_FRACTION)
    return split.select(train), split.select(test), names


def _hub_split_stream(
    name: str,
    splits: tuple[datasets.Dataset, datasets.Dataset, list[str]],
    per_task: int,
    options: StreamOptions,
) -> Stream:
    train, test, names = splits
    scenario = _scenario(options)
    return _split_stream(
        name, split_by_class(train, test, names, per_task, scenario, options), scenario
    )


@register("split-cifar100", "CIFAR-100, 10 tasks of 10 classes (Hub, or --data-dir)")
def build_split_cifar100(options: StreamOptions) -> Stream:
    """Split CIFAR-100 (class-incremental by default), official train/test splits."""
    return _hub_split_stream("split-cifar100", cifar100_splits(options.data_dir), 10, options)


@register("imagenet-r", "ImageNet-R, 10 tasks of 20 classes (Hub, or --data-dir)")
def build_imagenet_r(options: StreamOptions) -> Stream:
    """Split ImageNet-R (class-incremental by default), 80/20 per-class train/test."""
    return _hub_split_stream("imagenet-r", imagenet_r_splits(options.data_dir), 20, options)
