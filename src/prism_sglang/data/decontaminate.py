"""Keep evaluation prompts (MT-bench, HumanEval, GSM8K test) out of training data.

A text overlaps an evaluation item when
* it shares a word 10-gram with it (lower-cased words; punctuation and whitespace ignored), counting only
  grams with at least 6 alphabetic words of 3+ letters (so boiler-plate and number runs do not count) and
  found in at most 3 evaluation items (so generic phrasing shared by many items does not count); or
* its normalised text equals an evaluation turn; or
* it contains an evaluation turn of 8+ words verbatim (after the same normalisation).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import lru_cache

from prism_sglang.data.eval_sets import EVAL_BENCHES, EvalItem, load_eval_set, source_texts

NGRAM = 10
MIN_CONTENT_WORDS = 6
MAX_ITEMS_PER_GRAM = 3
MIN_CONTAINED_WORDS = 8

_WORD = re.compile(r"\w+")

Gram = tuple[str, ...]


def words(text: str) -> list[str]:
    """Lower-cased word tokens; everything that is not a letter, digit or underscore separates words."""
    return _WORD.findall(text.lower())


def _ngrams(ws: list[str], n: int) -> Iterator[Gram]:
    # zip builds the tuples in C (several times faster than slicing in a loop) and stops at the shortest
    # shifted copy, which is exactly the last full gram.
    return zip(*(ws[k:] for k in range(n)), strict=False)


def _is_informative(gram: Gram) -> bool:
    return sum(len(w) >= 3 and w.isalpha() for w in gram) >= MIN_CONTENT_WORDS


class Decontaminator:
    """An index over evaluation items; `matches` names the items a text overlaps."""

    def __init__(self, items: Iterable[EvalItem]) -> None:
        gram_items: dict[Gram, set[str]] = defaultdict(set)
        self._exact: dict[str, set[str]] = defaultdict(set)
        # First 8 words of each long turn -> (all its words, item key): a cheap entry point for containment.
        self._heads: dict[Gram, list[tuple[Gram, str]]] = defaultdict(list)
        for item in items:
            for text in source_texts(item):
                ws = words(text)
                self._exact[" ".join(ws)].add(item.key)
                if len(ws) >= MIN_CONTAINED_WORDS:
                    self._heads[tuple(ws[:MIN_CONTAINED_WORDS])].append((tuple(ws), item.key))
                for gram in _ngrams(ws, NGRAM):
                    gram_items[gram].add(item.key)
        self._grams = {g: frozenset(keys) for g, keys in gram_items.items()
                       if len(keys) <= MAX_ITEMS_PER_GRAM and _is_informative(g)}

    def matches(self, *texts: str) -> list[str]:
        """Sorted keys ("gsm8k/17", "mt-bench/81", ...) of the evaluation items any of `texts` overlaps."""
        hits: set[str] = set()
        for text in texts:
            hits |= self._text_matches(words(text))
        return sorted(hits)

    def _text_matches(self, ws: list[str]) -> set[str]:
        hits = set(self._exact.get(" ".join(ws), ()))
        for gram in self._grams.keys() & _ngrams(ws, NGRAM):
            hits |= self._grams[gram]
        for head in self._heads.keys() & _ngrams(ws, MIN_CONTAINED_WORDS):
            hits |= self._contained(ws, head)
        return hits

    def _contained(self, ws: list[str], head: Gram) -> set[str]:
        starts = [i for i in range(len(ws) - MIN_CONTAINED_WORDS + 1) if tuple(ws[i:i + MIN_CONTAINED_WORDS]) == head]
        return {key for full, key in self._heads[head] for i in starts if tuple(ws[i:i + len(full)]) == full}


@lru_cache(maxsize=1)
def default_decontaminator() -> Decontaminator:
    """The index over all evaluation sets this project reports (every turn of every item); built once."""
    return Decontaminator(item for bench in EVAL_BENCHES for item in load_eval_set(bench))
