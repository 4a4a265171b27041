"""Counters of a prep run: rows, tokens, and skipped inputs by reason with their first locations."""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_EXAMPLES = 5


@dataclass
class Stats:
    documents: int = 0  # input records seen (good or bad)
    rows: int = 0
    tokens: int = 0
    truncated: int = 0  # texts cut to --max-tokens (sentences, pairs)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, location: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(location)

    def add(self, other: "Stats") -> None:
        self.documents += other.documents
        self.rows += other.rows
        self.tokens += other.tokens
        self.truncated += other.truncated
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
            shown = self.examples.setdefault(reason, [])
            shown.extend(other.examples.get(reason, [])[: MAX_EXAMPLES - len(shown)])

    def to_dict(self) -> dict:
        return {
            "documents": self.documents,
            "rows": self.rows,
            "tokens": self.tokens,
            "truncated": self.truncated,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_examples": {k: self.examples[k] for k in sorted(self.examples)},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(
            documents=d["documents"],
            rows=d["rows"],
            tokens=d["tokens"],
            truncated=d["truncated"],
            skipped=dict(d["skipped"]),
            examples={k: list(v) for k, v in d["skipped_examples"].items()},
        )

    def skipped_summary(self) -> str:
        if not self.skipped:
            return "none"
        return ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
