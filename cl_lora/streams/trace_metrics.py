"""TRACE's per-task metrics as text metrics (BeyonderXX/TRACE at 462e39f: ``metrics.py`` and
``evaluations/eval_*.py``), each one example's value in [0, 1].

TRACE averages every metric over the test examples, ``sum / len(results)``, an empty generation
or answer counting 0 (``metrics.py`` lines 60-70, 76-86, 126-135); the suite's task score is the
same mean of these values. TRACE's scales are kept but divided by 100 where TRACE reports
percentages (Py150's similarity, 20Minuten's SARI), so every cell of the accuracy matrix is in
[0, 1].

- ``trace-accuracy`` (C-STANCE, FOMC, NumGLUE-cm, NumGLUE-ds): the generation equals the answer
  character for character (``caculate_accuracy``, ``metrics.py`` lines 76-86).
- ``trace-answer-letter`` (ScienceQA): the first characters are equal (``eval_ScienceQA.py``
  lines 6-13: ``resolve`` keeps ``datum[0]``, the option letter; TRACE raises ``IndexError`` on
  an empty generation, which scores 0 here).
- ``trace-rouge-l`` (MeetingBank): the ``rouge`` package's ROUGE-L F (version 1.0.1,
  TRACE's ``requirements.txt``), called as TRACE calls it, the answer as the hypothesis and the
  generation as the reference (``score_rouge(target, prediction)``, ``metrics.py`` lines 53-57
  and 67). A text with no sentence left after ``rouge`` splits it at full stops (``"..."``)
  makes ``rouge`` raise, which stops TRACE's evaluation; it scores 0 here.
- ``trace-similarity`` (Py150): fuzzywuzzy's ``fuzz.ratio`` of the two texts after TRACE's
  literal clean-up (``eval_Py150.py`` lines 6-12, 15-24; ``metrics.py`` lines 126-135), / 100.
  Without python-Levenshtein (not in TRACE's ``requirements.txt``) ``fuzz.ratio(a, b)`` is
  ``round(100 * difflib.SequenceMatcher(None, a, b).ratio())`` (100 for equal texts, 0 when one
  is empty), which is computed here with the standard library: with python-Levenshtein
  installed fuzzywuzzy computes another ratio, so the package would make the number depend on
  the environment.
- ``trace-sari`` (20Minuten): SARI of the generation against the answer, the prompt as the
  source (``caculate_sari``, ``metrics.py`` lines 141-144, given ``sources_sequences``, the
  prompts: ``inference/infer_single.py`` lines 166 and 341), / 100. TRACE loads it with
  ``datasets.load_metric("sari")``, a script fetched from the Hub at run time (and gone from
  ``datasets`` 3), so SARI is implemented here from that script's definition: both texts
  lower-cased and tokenized with sacrebleu's 13a tokenizer, then for n = 1..4 the F1 of kept
  n-grams, the precision of deleted n-grams and the F1 of added n-grams, with 0/0 = 1 and the
  keep-recall correction of the Hub script, averaged over n and then over the three.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

from cl_lora.streams.scoring import register_text_metric

_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


@register_text_metric(
    "trace-accuracy", "TRACE's accuracy: the generation equals the answer exactly"
)
def verbatim_accuracy(generation: str, answer: str, prompt: str) -> float:
    """1 when ``generation`` is ``answer`` character for character (neither empty), else 0."""
    return float(generation != "" and answer != "" and generation == answer)


@register_text_metric(
    "trace-answer-letter", "TRACE's ScienceQA accuracy: the first characters (option letters) equal"
)
def answer_letter(generation: str, answer: str, prompt: str) -> float:
    """1 when both texts start with the same character, else 0 (0 for an empty text)."""
    return float(generation != "" and answer != "" and generation[0] == answer[0])


@cache
def _rouge_l() -> Any:
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])


@register_text_metric(
    "trace-rouge-l", "TRACE's ROUGE-L F (the rouge package, as TRACE calls it)", ("rouge",)
)
def rouge_l(generation: str, answer: str, prompt: str) -> float:
    """ROUGE-L F of ``rouge`` 1.0.1 with the answer as hypothesis, the generation as reference
    (TRACE's order); 0 when either text is empty or has no sentence for ``rouge``."""
    if generation == "" or answer == "":
        return 0.0
    try:
        return float(_rouge_l().get_scores(answer, generation, avg=True)["rouge-l"]["f"])
    except ValueError:  # "Collections must contain at least 1 sentence."
        return 0.0


def py150_clean(code: str) -> str:
    """TRACE's clean-up of Py150's literal placeholders: ``<NUM_LIT>`` becomes ``0``,
    ``<STR_LIT>`` and ``<CHAR_LIT>`` disappear, and each ``<KIND_LIT:value>`` found in the text
    is replaced, wherever it occurs, by its value."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, value in _LITERAL.findall(code):
        code = code.replace(f"<{kind}_LIT:{value}>", value)
    return code


def fuzz_ratio(first: str, second: str) -> int:
    """fuzzywuzzy's ``fuzz.ratio`` without python-Levenshtein: 100 for equal texts, 0 when
    either is empty, else ``difflib``'s match ratio in percent, rounded."""
    if first == second:
        return 100
    if first == "" or second == "":
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, first, second).ratio()))


@register_text_metric(
    "trace-similarity", "TRACE's Py150 edit similarity (fuzz.ratio after its clean-up) / 100"
)
def edit_similarity(generation: str, answer: str, prompt: str) -> float:
    """``fuzz.ratio(generation, answer) / 100`` after :func:`py150_clean` (0 if either is
    empty after it)."""
    generation, answer = py150_clean(generation), py150_clean(answer)
    if generation == "" or answer == "":
        return 0.0
    return fuzz_ratio(generation, answer) / 100


@cache
def _tokenizer_13a() -> Any:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def sari_normalize(text: str) -> str:
    """The SARI script's normalization: lower case, then sacrebleu's 13a tokenizer."""
    return _tokenizer_13a()(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision > 0 or recall > 0 else 0.0


def _sari_terms(
    source: list[tuple[str, ...]],
    output: list[tuple[str, ...]],
    references: list[list[tuple[str, ...]]],
) -> tuple[float, float, float]:
    """Keep F1, deletion precision and addition F1 of one n-gram order. Source and output
    counts are weighted by the number of references, so that they compare with the pooled
    reference counts."""
    weight = len(references)
    in_references = Counter(gram for reference in references for gram in reference)
    in_source = Counter({gram: count * weight for gram, count in Counter(source).items()})
    in_output = Counter({gram: count * weight for gram, count in Counter(output).items()})

    kept = in_source & in_output
    kept_right = kept & in_references
    keepable = in_source & in_references
    keep_precision = (
        sum(kept_right[gram] / kept[gram] for gram in kept_right) / len(kept) if kept else 1.0
    )
    keep_recall = sum(kept_right.values()) / sum(keepable.values()) if keepable else 1.0

    deleted = in_source - in_output
    deleted_right = deleted - in_references
    delete_precision = (
        sum(deleted_right[gram] / deleted[gram] for gram in deleted_right) / len(deleted)
        if deleted
        else 1.0
    )

    added = set(in_output) - set(in_source)
    added_right = added & set(in_references)
    addable = set(in_references) - set(in_source)
    add_precision = len(added_right) / len(added) if added else 1.0
    add_recall = len(added_right) / len(addable) if addable else 1.0
    return _f1(keep_precision, keep_recall), delete_precision, _f1(add_precision, add_recall)


def sari_sentence(source: str, output: str, references: Sequence[str]) -> float:
    """SARI of one normalized sentence against its normalized references, in [0, 1]: keep,
    delete and add terms averaged over n-gram orders 1 to 4, then over the three."""
    words = [text.split(" ") for text in (source, output)]
    reference_words = [reference.split(" ") for reference in references]
    terms = [
        _sari_terms(
            _ngrams(words[0], n), _ngrams(words[1], n), [_ngrams(r, n) for r in reference_words]
        )
        for n in (1, 2, 3, 4)
    ]
    keep, delete, add = (sum(term[i] for term in terms) / 4 for i in range(3))
    return (keep + delete + add) / 3


@register_text_metric("trace-sari", "TRACE's SARI (the prompt as the source) / 100", ("sacrebleu",))
def sari(generation: str, answer: str, prompt: str) -> float:
    """SARI of ``generation`` simplifying ``prompt`` against the one reference ``answer``."""
    return sari_sentence(
        sari_normalize(prompt), sari_normalize(generation), [sari_normalize(answer)]
    )
