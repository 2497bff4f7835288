"""Problems: how a kind of model learns, predicts and is observed (see :mod:`.base`).

A stream declares its problem by name (``Stream.problem``); :func:`build_problem` pairs it with
the loaded backbone.
"""

from cl_lora.backbones.base import Backbone
from cl_lora.errors import BadInputError
from cl_lora.problems.base import Batch, Problem
from cl_lora.problems.classification import Classification
from cl_lora.problems.text_to_text import Seq2SeqTextToText, TextToText
from cl_lora.streams import Stream


def build_problem(
    stream: Stream,
    backbone: Backbone,
    max_length: int,
    prompt_keep: str = "ends",
    max_new_tokens: int | None = None,
    loss_average: str = "tokens",
    answer_by: str = "generate",
) -> Problem:
    """The problem ``stream`` declares, for ``backbone`` (which must be able to learn it).
    ``prompt_keep``, ``max_new_tokens``, ``loss_average`` and ``answer_by`` shape a language
    model's prompts, generations, loss and answers (:class:`TextToText`); a classification
    stream has none of them."""
    if stream.problem == TextToText.kind:
        if backbone.tokenizer is None:
            raise BadInputError(
                f"stream {stream.name} is text-to-text and needs a language model: pass "
                "--backbone smollm2-135m, a local causal-LM folder or a Hub name"
            )
        encoder_decoder = getattr(backbone.encoder.config, "is_encoder_decoder", False)
        return (Seq2SeqTextToText if encoder_decoder else TextToText)(
            backbone,
            stream,
            max_length,
            prompt_keep=prompt_keep,
            max_new_tokens=max_new_tokens,
            loss_average=loss_average,
            answer_by=answer_by,
        )
    shaped = (prompt_keep, max_new_tokens, loss_average, answer_by)
    if shaped != ("ends", None, "tokens", "generate"):
        raise BadInputError(
            f"--prompt-keep, --max-new-tokens, --loss-average and --answer-by shape a language "
            f"model's prompts, answers and loss; stream {stream.name} trains task heads: drop them"
        )
    if backbone.collate is None:
        raise BadInputError(
            f"stream {stream.name} trains task heads on pooled features; backbone "
            f"'{backbone.source.get('name')}' is a language model: pass an encoder backbone "
            "(or use a text-to-text stream such as offline-instruct)"
        )
    return Classification(backbone, stream)


__all__ = ["Batch", "Classification", "Problem", "Seq2SeqTextToText", "TextToText", "build_problem"]
