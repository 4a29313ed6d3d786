"""Draft sources for speculative decoding. A drafter proposes tokens; the loop verifies them
against the model in one forward pass, so a wrong draft costs time, never correctness.

- PromptLookup: the tokens that followed the latest earlier occurrence of the context's suffix.
- PredictionDraft: the caller's predicted output (e.g. the file being rewritten), followed in
  step with the output and realigned where the output rejoins it after an edit."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict


class PromptLookup:
    """n-gram index over the whole context (prompt + output), kept up to date incrementally."""

    source = "prompt_lookup"

    def __init__(self, context: list[int], max_ngram: int = 3, min_ngram: int = 2):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self.index: dict[tuple[int, ...], int] = {}  # n-gram -> latest end position, excluding the suffix
        self.extend(context)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            # index the n-grams that end at the previous position: the suffix itself must not match
            end = len(self.tokens) - 1
            for n in range(self.min_ngram, self.max_ngram + 1):
                if end - n + 1 >= 0:
                    self.index[tuple(self.tokens[end - n + 1 : end + 1])] = end
            self.tokens.append(t)

    def draft(self, k: int) -> list[int]:
        toks = self.tokens
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(toks) < n:
                continue
            end = self.index.get(tuple(toks[-n:]))
            if end is not None:
                return toks[end + 1 : end + 1 + k]
        return []

    def accept(self, tokens: list[int]) -> None:
        """The tokens the output actually got (accepted drafts and the model's own next token)."""
        self.extend(tokens)


class PredictionDraft:
    """Drafts from a predicted output, advancing a pointer as the output follows it."""

    source = "prediction"

    def __init__(self, prediction: list[int], ngram: int = 3):
        self.pred = prediction
        self.ngram = ngram
        self.pos = 0  # index in pred of the token the output is expected to produce next
        self.aligned = bool(prediction)
        self.output: list[int] = []
        self.index: dict[tuple[int, ...], list[int]] = defaultdict(list)  # n-gram -> sorted end positions
        for end in range(ngram - 1, len(prediction)):
            self.index[tuple(prediction[end - ngram + 1 : end + 1])].append(end)

    def draft(self, k: int) -> list[int]:
        if not self.aligned:
            self._realign()
        return self.pred[self.pos : self.pos + k] if self.aligned else []

    def accept(self, tokens: list[int]) -> None:
        for t in tokens:
            self.output.append(t)
            if self.aligned and self.pos < len(self.pred) and self.pred[self.pos] == t:
                self.pos += 1
            else:
                self.aligned = False

    def _realign(self) -> None:
        # Where does the output rejoin the prediction? The first place at or after the point of
        # divergence where the prediction holds the output's last n tokens.
        if len(self.output) < self.ngram:
            return
        ends = self.index.get(tuple(self.output[-self.ngram :]))
        if not ends:
            return
        i = bisect_left(ends, self.pos)
        if i < len(ends):
            self.pos = ends[i] + 1
            self.aligned = True


class DraftLength:
    """How many tokens to draft next: grow while drafts are accepted, shrink after a rejection,
    so a poor draft source costs little more than plain decoding."""

    def __init__(self, start: int, max_len: int, min_len: int = 1):
        self.k, self.max_len, self.min_len = start, max_len, min_len

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            return
        if accepted == drafted:
            self.k = min(self.max_len, self.k * 2)
        else:
            self.k = max(self.min_len, accepted + 1)
