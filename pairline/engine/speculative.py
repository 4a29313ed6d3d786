"""Draft sources for speculative decoding. A drafter proposes tokens; the loop verifies them
against the model in one forward pass, so a wrong draft costs time, never correctness.

- PromptLookup: the tokens that followed the latest earlier occurrence of the context's suffix.
- PredictionDraft: the caller's predicted output (e.g. the file being rewritten), followed in
  step with the output and realigned where the output rejoins it after an edit."""

from __future__ import annotations

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

    def __init__(self, prediction: list[int], ngram: int = 3, context: list[int] | None = None):
        self.source = "prediction"  # where the latest draft came from
        # While the output has left the prediction, draft by lookup over the context instead: after
        # an edit the model may spell the same text with other token boundaries, and then no n-gram
        # of token ids rejoins the prediction (measured: docs/benchmarks.md, issue 3 quiet rerun).
        self.lookup = PromptLookup(context) if context is not None else None
        self.pred = prediction
        self.ngram = ngram
        self.max_reach = 64  # how far back a rejoin's match is compared
        self.max_candidates = 256  # places compared per rejoin (a very common n-gram: the first ones)
        self.pos = 0  # index in pred of the token the output is expected to produce next
        self.aligned = bool(prediction)
        self.output: list[int] = []
        self.index: dict[tuple[int, ...], list[int]] = defaultdict(list)  # n-gram -> sorted end positions
        for end in range(ngram - 1, len(prediction)):
            self.index[tuple(prediction[end - ngram + 1 : end + 1])].append(end)

    def draft(self, k: int) -> list[int]:
        if not self.aligned:
            self._realign()
        if self.aligned:
            self.source = "prediction"
            return self.pred[self.pos : self.pos + k]
        self.source = "prompt_lookup"
        return self.lookup.draft(k) if self.lookup is not None else []

    def accept(self, tokens: list[int]) -> None:
        if self.lookup is not None:
            self.lookup.accept(tokens)
        for t in tokens:
            self.output.append(t)
            if self.aligned and self.pos < len(self.pred) and self.pred[self.pos] == t:
                self.pos += 1
            else:
                self.aligned = False

    def _realign(self) -> None:
        """Where does the output rejoin the prediction? Of the places where the prediction holds the
        output's last n tokens, the one where the match reaches furthest back: the output copies
        the file, so at the right place it matches back to the edit, while a line of boilerplate
        ("        return x") matches a few tokens at dozens of places. Any place, before the pointer
        too: a wrong rejoin sends the pointer ahead, and the right place must stay reachable
        (measured: after one, a rewrite of bisect.py never followed its prediction again). Ties go
        to the place nearest the pointer."""
        out = self.output
        if len(out) < self.ngram:
            return
        ends = self.index.get(tuple(out[-self.ngram :]))
        if not ends:
            return
        best, best_len = None, 0
        for end in ends[: self.max_candidates]:
            n = self.ngram
            while n < self.max_reach and n < len(out) and end - n >= 0 and self.pred[end - n] == out[-n - 1]:
                n += 1
            if n > best_len or (n == best_len and abs(end - self.pos) < abs(best - self.pos)):
                best, best_len = end, n
        if best + 1 < len(self.pred):
            self.pos = best + 1
            self.aligned = True


class StepCosts:
    """What a forward call of w tokens costs on this runtime, relative to a 1-token step, learned
    from the calls the loop makes (running averages per width). Runtimes differ a lot here: a
    verify of 17 tokens costs ~3x a step in one and ~11x in another (docs/benchmarks.md)."""

    def __init__(self, slope_hint: float = 0.35, smoothing: float = 0.25, learn: bool = True):
        self.slope_hint = slope_hint  # extra cost per token, as a fraction of a step, until measured
        self.smoothing = smoothing
        self.learn = learn  # False: keep the hint (tests that must exercise verification use this)
        self.seconds: dict[int, float] = {}  # width -> running average

    def record(self, width: int, seconds: float) -> None:
        if not self.learn:
            return
        old = self.seconds.get(width)
        self.seconds[width] = seconds if old is None else old + self.smoothing * (seconds - old)

    def relative(self, width: int) -> float:
        """cost(width) / cost(1); interpolated between measured widths, extrapolated past them."""
        if width <= 1:
            return 1.0
        known = sorted(self.seconds)
        one = self.seconds.get(1)
        if one is None or len(known) < 2:
            return 1.0 + self.slope_hint * (width - 1)
        if width in self.seconds:
            return self.seconds[width] / one
        lo = max((w for w in known if w < width), default=1)
        hi = min((w for w in known if w > width), default=None)
        if hi is None:  # past the widest measured: continue the slope of the widest two
            hi, lo = lo, max((w for w in known if w < lo), default=1)
        slope = (self.seconds[hi] - self.seconds[lo]) / (hi - lo)
        return max(1.0, (self.seconds[lo] + slope * (width - lo)) / one)


# Draft lengths the policy picks from: few enough that each width gets measured.
DRAFT_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class DraftPolicy:
    """How many drafted tokens to verify next. Per-token acceptance a (a running estimate) makes
    a k-token draft yield (1 - a^(k+1)) / (1 - a) tokens for the cost of a (k+1)-token call; the
    policy takes the k with the most tokens per unit of cost, and none when plain decoding wins.
    So a useless draft source switches itself off after a few misses, and a good one gets long
    drafts where the runtime verifies cheaply. While off, it probes now and then with a short draft
    so that it notices when the source starts paying again."""

    def __init__(self, costs: StepCosts, prior: float, max_len: int, memory: float = 0.85, probe_every: int = 16):
        self.costs, self.max_len, self.memory, self.probe_every = costs, max_len, memory, probe_every
        self.accepted, self.trials = 2.0 * prior, 2.0  # the prior counts as two observations
        self.idle = 0  # steps since the last draft
        self.drafts = 0
        self.stretch_every = 8
        self.explore_wide_above = 0.97  # acceptance past which the stretch tries the widest draft

    @property
    def acceptance(self) -> float:
        return self.accepted / self.trials

    def choose(self, available: int) -> int:
        """available: how many draft tokens the source offers now. Returns how many to verify."""
        limit = min(available, self.max_len)
        if limit <= 0:
            return 0
        a = min(self.acceptance, 0.999)
        best_k, best = 0, 1.0  # plain decoding: one token per step
        for k in (*[c for c in DRAFT_CHOICES if c < limit], limit):
            value = (1 - a ** (k + 1)) / (1 - a) / self.costs.relative(k + 1)
            if value > best * 1.02:  # ties go to the shorter draft
                best_k, best = k, value
        if best_k == 0:
            self.idle += 1
            if self.idle >= self.probe_every:
                self.idle = 0
                return min(2, limit)
            return 0
        self.drafts += 1
        if self.drafts % self.stretch_every == 0:
            # Now and then a wider call than the best one, so that its cost gets measured: wider
            # calls cost less per token on a CPU, but the cost of a width never tried is extrapolated
            # from narrow ones, and one measured during a hiccup would otherwise never be measured
            # again. With drafts this reliable, straight to the widest (measured: a policy stuck
            # on 6-token drafts at acceptance 0.999 while 32 cost half as much per token).
            if a >= self.explore_wide_above:
                return limit
            return min(limit, next((c for c in DRAFT_CHOICES if c > best_k), limit))
        return best_k

    def update(self, drafted: int, accepted: int) -> None:
        """A geometric model: each draft token is a trial until the first rejection."""
        if drafted == 0:
            return
        self.idle = 0
        self.accepted = self.memory * self.accepted + accepted
        self.trials = self.memory * self.trials + accepted + (1 if accepted < drafted else 0)
