"""Incremental text for streams: decode the whole output each time and send only the new, settled suffix."""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT_CHAR = "\ufffd"  # what a token that ends inside a multi-byte character decodes to, for now


class TextStream:
    """Text deltas that always add up to the final (stop-string-trimmed) text.

    While the output may still end in a stop string, the last `len(longest stop) - 1` characters are held back:
    a stop string that completes later begins at or after the held-back part, so nothing sent is ever cut.
    """

    def __init__(self, tokenizer, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._holdback = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def delta(self, output_ids: Sequence[int]) -> str:
        text = self._tokenizer.decode(list(output_ids), skip_special_tokens=True)
        settled = len(text.rstrip(REPLACEMENT_CHAR)) - self._holdback
        return self._advance(text, settled)

    def final(self, text: str) -> str:
        return self._advance(text, len(text))

    def _advance(self, text: str, settled: int) -> str:
        # Decoding more tokens can rewrite the tail (e.g. tokenizer space clean-up); wait until it agrees again.
        if settled <= len(self.sent) or not text.startswith(self.sent):
            return ""
        piece = text[len(self.sent):settled]
        self.sent += piece
        return piece
