"""A tiny synthetic language, generated (no download): sentences of a small grammar with
agreement rules a language model can learn, tokenised per character.

``make_corpus(sentences, seed)`` writes sentences such as "the small robot sees two red
boxes." (singular and plural agree, numbers agree with nouns); ``TextWindows`` cuts the
character stream into fixed windows ``(x, y)`` with ``y`` shifted by one character.
"""

from __future__ import annotations

import random

import torch

SUBJECTS = ["robot", "cat", "child", "farmer", "pilot", "teacher"]
VERBS = {"sees": "see", "likes": "like", "paints": "paint", "finds": "find", "counts": "count"}
OBJECTS = ["box", "apple", "kite", "stone", "lamp", "boat"]
ADJECTIVES = ["small", "red", "old", "quiet", "bright", "green"]
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


_IRREGULAR = {"child": "children"}


def _plural(noun: str) -> str:
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    return noun + ("es" if noun.endswith(("x", "s")) else "s")


def make_corpus(sentences: int, seed: int = 0) -> str:
    """``sentences`` sentences of the grammar, joined by spaces (deterministic in ``seed``).

    Example:
        >>> make_corpus(1, seed=0).endswith(".")
        True
    """
    rnd = random.Random(seed)
    out = []
    for _ in range(sentences):
        plural_subject = rnd.random() < 0.4
        subject = rnd.choice(SUBJECTS)
        verb = rnd.choice(list(VERBS))
        n = rnd.choice(list(NUMBERS))
        obj = rnd.choice(OBJECTS)
        words = ["the", rnd.choice(ADJECTIVES)]
        words += [_plural(subject), VERBS[verb]] if plural_subject else [subject, verb]
        words += [NUMBERS[n], rnd.choice(ADJECTIVES), obj if n == 1 else _plural(obj)]
        out.append(" ".join(words) + ".")
    return " ".join(out)


class TextWindows(torch.utils.data.Dataset):
    """Windows of ``block_size`` characters (stride ``block_size``): ``(x, y)`` long tensors,
    ``y`` the next character of each position.

    Example:
        >>> ds = TextWindows("abcdefghij", block_size=4)
        >>> len(ds), ds.decode(ds[0][0].tolist()), ds.decode(ds[0][1].tolist())
        (2, 'abcd', 'bcde')
    """

    def __init__(self, text: str, block_size: int, alphabet: str | None = None):
        self.alphabet = alphabet if alphabet is not None else "".join(sorted(set(text)))
        self.stoi = {c: i for i, c in enumerate(self.alphabet)}
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters {unknown} are not in the alphabet {self.alphabet!r}")
        self.data = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        self.block_size = block_size
        self.count = (len(self.data) - 1) // block_size
        if self.count < 1:
            raise ValueError(
                f"text of {len(text)} characters is shorter than one window ({block_size} + 1)"
            )

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.block_size
        chunk = self.data[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]

    @property
    def vocab(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)
