"""The three shard kinds (DESIGN.md §3): their schemas, options, and how records become rows.

A kind works in two steps so that a whole unit of records is tokenized in one batched call:
``prepare`` validates one parsed record and names the texts to tokenize; ``emit`` turns the
token ids back into rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from datasets import Features, List, Value

from .errors import BadRecord, PrepError
from .records import Parsed, doc_id, string_list_field, text_field
from .stats import Stats
from .windows import draw_split, window_bounds

_ids = List(Value("int32"))

FEATURES = {
    "compression": Features(
        {"context_ids": _ids, "continuation_ids": _ids, "doc_id": Value("string"), "window": Value("int32")}
    ),
    "sentences": Features({"input_ids": _ids, "doc_id": Value("string")}),
    "pairs": Features(
        {"query_ids": _ids, "positive_ids": _ids, "negative_ids": List(_ids), "source": Value("string")}
    ),
}


@dataclass(frozen=True)
class ReaderOptions:
    text_field: str = "text"
    id_field: str = "id"
    paragraphs: bool = False  # .txt: blank-line-separated documents instead of one per line


@dataclass(frozen=True)
class CompressionOptions:
    max_tokens: int = 512
    min_context: int = 10
    min_continuation: int = 10
    seed: int = 0

    def validate(self) -> None:
        if self.min_context < 1 or self.min_continuation < 1:
            raise PrepError("--min-context and --min-continuation must be at least 1")
        if self.max_tokens < 2 * (self.min_context + self.min_continuation):
            # Balanced windows of a long document are longer than max_tokens / 2; this keeps each splittable.
            raise PrepError(
                f"--max-tokens {self.max_tokens} must be at least twice "
                f"--min-context + --min-continuation ({self.min_context + self.min_continuation})"
            )


@dataclass(frozen=True)
class SentencesOptions:
    max_tokens: int = 512
    min_tokens: int = 1

    def validate(self) -> None:
        if self.max_tokens < 1 or self.min_tokens < 1 or self.min_tokens > self.max_tokens:
            raise PrepError("need 1 <= --min-tokens <= --max-tokens")


@dataclass(frozen=True)
class PairsOptions:
    max_tokens: int = 512
    template: str = "{instruction}: {query}"
    instruction: str = ""  # for records with neither an instruction nor a known task
    instructions: dict[str, str] = field(default_factory=dict)  # task name -> instruction

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise PrepError("--max-tokens must be at least 1")
        try:
            self.template.format(instruction="i", query="q")
        except (KeyError, IndexError, ValueError) as e:
            raise PrepError(f"--template {self.template!r}: only {{instruction}} and {{query}} may appear ({e})") from None
        if "{query}" not in self.template:
            raise PrepError(f"--template {self.template!r} must contain {{query}}")

    def apply(self, instruction: str, query: str) -> str:
        return self.template.format(instruction=instruction, query=query) if instruction else query


@dataclass
class Prepared:
    texts: list[str]
    meta: Any


class Kind:
    name: str
    input_fields: tuple[str, ...]

    def __init__(self, reader: ReaderOptions, options):
        self.reader = reader
        self.options = options

    @property
    def features(self) -> Features:
        return FEATURES[self.name]

    def prepare(self, obj: Parsed, location: str, source: str) -> Prepared:
        raise NotImplementedError

    def emit(self, prepared: Prepared, ids: list[list[int]], location: str, out: dict[str, list], stats: Stats) -> None:
        raise NotImplementedError

    def _text(self, obj: Parsed) -> str:
        text = text_field(obj, self.reader.text_field)
        if not text.strip():
            raise BadRecord("empty_text")
        return text

    def _truncate(self, ids: list[int], stats: Stats) -> list[int]:
        if len(ids) > self.options.max_tokens:
            stats.truncated += 1
            return ids[: self.options.max_tokens]
        return ids


class Compression(Kind):
    name = "compression"

    @property
    def input_fields(self):
        return (self.reader.text_field, self.reader.id_field)

    def prepare(self, obj, location, source):
        return Prepared([self._text(obj)], doc_id(obj, self.reader.id_field, location))

    def emit(self, prepared, ids, location, out, stats):
        (tokens,) = ids
        o = self.options
        if len(tokens) < o.min_context + o.min_continuation:
            stats.skip("too_short", location)
            return
        for w, (a, b) in enumerate(window_bounds(len(tokens), o.max_tokens)):
            cut = a + draw_split(o.seed, prepared.meta, w, b - a, o.min_context, o.min_continuation)
            out["context_ids"].append(tokens[a:cut])
            out["continuation_ids"].append(tokens[cut:b])
            out["doc_id"].append(prepared.meta)
            out["window"].append(w)
            stats.rows += 1
            stats.tokens += b - a


class Sentences(Kind):
    name = "sentences"

    @property
    def input_fields(self):
        return (self.reader.text_field, self.reader.id_field)

    def prepare(self, obj, location, source):
        return Prepared([self._text(obj)], doc_id(obj, self.reader.id_field, location))

    def emit(self, prepared, ids, location, out, stats):
        tokens = self._truncate(ids[0], stats)
        if len(tokens) < self.options.min_tokens:
            stats.skip("too_short", location)
            return
        out["input_ids"].append(tokens)
        out["doc_id"].append(prepared.meta)
        stats.rows += 1
        stats.tokens += len(tokens)


class Pairs(Kind):
    name = "pairs"
    input_fields = ("query", "positive", "negative", "negatives", "instruction", "task", "source")

    def prepare(self, obj, location, source):
        if isinstance(obj, str):
            raise BadRecord("not_an_object")
        query = text_field(obj, "query")
        positive = text_field(obj, "positive")
        negatives = string_list_field(obj, "negatives", one_string=False)
        if negatives is None:
            negatives = string_list_field(obj, "negative") or []
        if not query.strip() or not positive.strip() or not all(n.strip() for n in negatives):
            raise BadRecord("empty_text")
        instruction = text_field(obj, "instruction", required=False)
        task = text_field(obj, "task", required=False)
        if instruction is None and task is not None:
            if task not in self.options.instructions:
                if self.options.instructions:
                    raise BadRecord(f"unknown_task:{task}")
            else:
                instruction = self.options.instructions[task]
        if instruction is None:
            instruction = self.options.instruction
        row_source = text_field(obj, "source", required=False) or task or source
        return Prepared([self.options.apply(instruction, query), positive, *negatives], row_source)

    def emit(self, prepared, ids, location, out, stats):
        query, positive, *negatives = (self._truncate(t, stats) for t in ids)
        out["query_ids"].append(query)
        out["positive_ids"].append(positive)
        out["negative_ids"].append(negatives)
        out["source"].append(prepared.meta)
        stats.rows += 1
        stats.tokens += len(query) + len(positive) + sum(len(n) for n in negatives)


KINDS: dict[str, Callable[..., Kind]] = {"compression": Compression, "sentences": Sentences, "pairs": Pairs}
OPTIONS = {"compression": CompressionOptions, "sentences": SentencesOptions, "pairs": PairsOptions}


def make_kind(name: str, reader: ReaderOptions, options) -> Kind:
    options.validate()
    return KINDS[name](reader, options)
