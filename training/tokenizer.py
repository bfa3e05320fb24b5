"""A CLIP tokenizer whose vocabulary is the shapes world's words, one token per word.

The merges are learned by plain BPE over the word list itself (every word once, merge the most
frequent pair until each word is one symbol), so CLIP's BPE, which applies merges in the order
learned, always rebuilds whole words. Anything else falls back to characters.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from shapeworld.captions import words

MAX_LENGTH = 16  # the longest caption is 12 tokens with its start and end markers


def learn_merges(vocabulary: list[str]) -> list[tuple[str, str]]:
    words_as_symbols = [[*w[:-1], w[-1] + "</w>"] for w in vocabulary]
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in words_as_symbols:
            pairs.update(itertools.pairwise(symbols))
        if not pairs:
            return merges
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the pair: deterministic
        merges.append(best)
        joined = best[0] + best[1]
        for i, symbols in enumerate(words_as_symbols):
            out, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    out.append(joined)
                    j += 2
                else:
                    out.append(symbols[j])
                    j += 1
            words_as_symbols[i] = out


def build_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    merges = learn_merges(words())
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = [*letters, *(c + "</w>" for c in letters)]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    # transformers 5 takes (left, right) pairs here, though its annotation says strings.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=MAX_LENGTH,
    )
