"""Task streams for continual learning: definitions, a registry, and the built-in streams.

A :class:`Stream` is an ordered tuple of :class:`Task` objects; builders register under a
name (:func:`register`) and are looked up with :func:`get`. Built-in streams: ``offline-text``
and ``offline-domains`` (packaged data, no download), ``glue-seq`` (Hub or local GLUE TSVs), the
image streams ``offline-vision`` (packaged), ``split-cifar100`` and ``imagenet-r``, and the
text-to-text streams ``offline-instruct`` and ``offline-commonsense`` (packaged),
``cl-benchmark`` and ``long-15`` (O-LoRA's benchmark files, local) and ``trace`` (TRACE's
released files, local).
"""

import cl_lora._torchvision_compat  # noqa: F401  (before anything imports torchvision)
from cl_lora.streams import (  # noqa: F401  (registers the built-in streams)
    cl_benchmark,
    commonsense,
    glue,
    instruct,
    offline,
    trace,
    vision,
)
from cl_lora.streams.base import Stream, StreamOptions, Task
from cl_lora.streams.knowledge_qa import KnowledgeQA, nq_open
from cl_lora.streams.offline import knowledge_probe
from cl_lora.streams.registry import STREAMS, StreamEntry, build, recipe, register

__all__ = [
    "STREAMS",
    "KnowledgeQA",
    "Stream",
    "StreamEntry",
    "StreamOptions",
    "Task",
    "build",
    "knowledge_probe",
    "recipe",
    "nq_open",
    "register",
]
