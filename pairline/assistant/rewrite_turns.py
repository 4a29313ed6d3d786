"""The coder's rewrite turns (a mixin of `Coder`, which holds the turn's state and its check):

- a focused edit (focus.py): a Python file's definitions that the instruction names are shown, and
  the answer is merged back by name;
- a lazy rewrite (region.py): the whole file is shown, and each code block of the answer is a region
  of it, spliced in place.

Both retry once with the errors of the check after the edit, or when nothing changed.
"""

from __future__ import annotations

import time
from pathlib import Path

from pairline.assistant import check
from pairline.assistant.delete import delete_targets
from pairline.assistant.edit_grammar import rewrite_grammar
from pairline.assistant.focus import Focus, FocusError, Repeats, find_focus, focus_messages, merge
from pairline.assistant.region import Region, in_order, next_region, splice
from pairline.assistant.rename import rename_targets
from pairline.assistant.rewrite import (
    BlockStream,
    MalformedOutputError,
    build_request,
    extract_code,
    fence_for,
    language_for,
)
from pairline.assistant.sites import find_sites, sites_message
from pairline.assistant.turn import Event, FileState, LinkedCancel, TurnResult
from pairline.engine.constraint import Grammar
from pairline.engine.generate import CancelToken

MAX_REGIONS = 8  # a lazy rewrite's answer is continued after a stopped region at most this many times


REWRITE_NO_OP = (
    "Your code block is the same as the file's lines: nothing changed. Write the part the instruction "
    "asks to change as it must read after the change."
)


class RewriteTurns:
    """`Coder._rewrite` and what it needs; the attributes and `_check`/`_collect` are `Coder`'s."""

    # ---------------------------------------------------------------- focused edit (focus.py)

    def _focus(self, f: FileState, instruction: str) -> Focus | None:
        """What the model is shown of a Python file (focus.py), where focused edits are on; None for
        other files, or where the instruction names nothing of it."""
        if not self.focus or language_for(f.shown) != "python":
            return None
        return find_focus(f.model_text, instruction)

    def _focused(self, f: FileState, focus: Focus, instruction: str, cancel: CancelToken,
                 max_tokens: int | None) -> TurnResult:
        """The model sees the definitions the instruction is about and rewrites those that change;
        its answer is merged back by name. One retry with the errors (a merge that fails, the
        check after it, or nothing changed)."""
        result = TurnResult("unchanged", files={f.real: f})
        result.stats.mode = "focus"
        messages, prediction = focus_messages(f.shown, focus, instruction, fence_for(focus.text))
        n = self.client.count_tokens(focus.text)
        budget = min(max_tokens or 1 << 30, 2 * n + 256)  # the parts again, and room for a new helper
        grammar = rewrite_grammar(f.shown) if self.constrain else None
        errors: list[str] = []
        for attempt in (1, 2):
            self.on_event(Event("focus", focus.text, path=f.shown))
            blocks = self._focus_answer(f, messages, prediction, budget, grammar, cancel, result)
            if cancel.cancelled:
                result.status = "cancelled"
                return result
            try:
                if not blocks:
                    raise FocusError("the answer holds no complete code block; nothing was written")
                new, notes = merge(f.model_text, blocks, Path(f.shown).stem)
            except FocusError as err:
                errors = [str(err)]
            else:
                current = {f.real: new}
                errors, _ = self._check(current, result, instruction, rewrite=False)
                if not errors and (current[f.real] != f.model_text or attempt == 2):  # unchanged twice: unchanged
                    for note in notes:
                        self.on_event(Event("status", f"{f.shown}: {note}", path=f.shown))
                    self._collect(current, result)
                    return result
                errors = errors or [REWRITE_NO_OP]
            if attempt == 2:
                break
            result.stats.retried = True
            result.stats.check_retried = errors != [REWRITE_NO_OP]
            self.on_event(Event("retry", "\n".join(errors)))
            messages = [*messages, {"role": "assistant", "content": result.answer},
                        {"role": "user", "content": check.retry_message(errors, "focus")}]
        result.status, result.errors, result.notes = "malformed", errors, []
        return result

    def _focus_answer(self, f: FileState, messages: list[dict], prediction: str, budget: int,
                      grammar: Grammar | None, cancel: CancelToken, result: TurnResult) -> list[str]:
        """One answer's complete code blocks (a block the token limit cut is left out)."""
        started = time.perf_counter()
        inner = LinkedCancel(cancel)
        reply = self.client.stream(messages, max_tokens=budget, prediction=prediction, cancel=inner, grammar=grammar)
        result.stats.predicted = result.stats.predicted or reply.prediction_tokens
        lines, blocks, repeats = BlockStream(), [[]], Repeats()

        def take(pending) -> None:
            for line in pending:
                if inner.cancelled:
                    return
                if repeats.again(line):  # a definition written again: the answer is over
                    inner.cancel()
                    return
                blocks[-1].append(line)
                self.on_event(Event("rewrite_line", line, path=f.shown))

        try:
            for delta in reply:
                if inner.cancelled:
                    continue  # the engine ends within a step; drain it so its lock is released
                self.on_event(Event("text", delta))
                take(lines.feed(delta))
                while lines.state == "done" and not inner.cancelled:
                    blocks.append([])
                    repeats.new_block()
                    take(lines.next_block())
                if lines.chatter:  # prose after the code: the answer's code is over
                    inner.cancel()
        finally:
            reply.close()
        result.stats.add(reply, started)
        result.answer = reply.text
        if lines.state == "code" and reply.finish_reason == "length":
            blocks.pop()
        elif lines.state == "code" and not inner.cancelled:
            take(lines.finish())
        code = ["".join(x + "\n" for x in b) for b in blocks if b]
        result.stats.regions = len(code)
        return code

    # ---------------------------------------------------------------- whole-file rewrite

    def _rewrite(self, f: FileState, instruction: str, cancel: CancelToken, max_tokens: int | None) -> TurnResult:
        focus = self._focus(f, instruction)
        if focus is not None and not (  # a merge by name can neither rename nor delete
                rename_targets(instruction, f.model_text) or delete_targets(instruction, f.model_text)):
            return self._focused(f, focus, instruction, cancel, max_tokens)
        result = TurnResult("unchanged", files={f.real: f})
        result.stats.mode = "rewrite"
        sites = find_sites({f.shown: f.model_text}, instruction)
        req = build_request(f.shown, f.text or "", instruction, sites_message(sites) if self.hints else "")
        self._sites = frozenset(s.line - 1 for s in sites)
        budget = max_tokens or rewrite_budget(self.client.count_tokens(f.model_text))
        messages = req.messages
        for attempt in (1, 2):
            answered = self._rewrite_once(f, messages, req.prediction, req.model_text, budget, cancel, result)
            if answered is None:
                return result
            new_model, spliced = answered
            current = {f.real: new_model}
            # a spliced file is whole: lines it lost are refused, not put back
            errors, _ = self._check(current, result, instruction, rewrite=not spliced)
            # a region copied unchanged (measured: the 0.5B model's answer to some bug fixes) goes
            # back once as "nothing changed", as blocks that change nothing do
            no_op = not errors and current[f.real] == req.model_text and attempt == 1 and not cancel.cancelled
            if not errors and not no_op:
                self._collect(current, result)
                return result
            if attempt == 2 or cancel.cancelled:
                break
            # one retry with the errors; the prediction is the original file again
            result.stats.retried = True
            result.stats.check_retried = not no_op
            errors = errors or [REWRITE_NO_OP]
            self.on_event(Event("retry", "\n".join(errors)))
            messages = [
                *messages,
                {"role": "assistant", "content": result.answer},
                {"role": "user", "content": check.retry_message(errors, "rewrite")},
            ]
        result.status, result.errors = "malformed", errors
        result.notes = []
        return result

    def _rewrite_once(
        self,
        f: FileState,
        messages: list[dict],
        prediction: str,
        model_text: str,
        budget: int,
        cancel: CancelToken,
        result: TurnResult,
    ) -> tuple[str, bool] | None:
        """One rewrite answer: the new file (LF) and whether it was spliced from the answer's regions
        (region.py; else it is the answer's one code block, taken as the file, which the check may
        still repair), or None with the result's status set.

        A region whose model copies on past its change is stopped where it rejoins the file (the
        rest is spliced from the file); where the client can continue an answer, a new request then
        goes on after a closed fence, so the model may write the next region or end."""
        old = model_text.split("\n")
        if old and old[-1] == "":
            old.pop()
        # under the grammar the answer is code blocks only, so one may follow another; without it
        # what follows a closed block is chatter, and the answer ends there
        grammar = rewrite_grammar(f.shown) if self.constrain else None
        fence_open = f"```{language_for(f.shown)}\n"
        regions: list[Region] = []
        answer, reply = "", None
        while budget > 0:
            started = time.perf_counter()
            inner = LinkedCancel(cancel)  # stopping a region leaves the turn (and a retry) alive
            reply = self.client.stream(messages, max_tokens=budget, prefix=answer, prediction=prediction,
                                       cancel=inner, grammar=grammar)
            result.stats.predicted = result.stats.predicted or reply.prediction_tokens
            lines = BlockStream()
            region: Region | None = None
            stopped = ended = False  # stopped: a region rejoined the file; ended: the answer is over
            for delta in reply:
                if stopped or ended:
                    continue  # the engine ends within a step; drain it so its lock is released
                self.on_event(Event("text", delta))
                pending = lines.feed(delta)
                while not stopped:
                    for line in pending:
                        region = region or next_region(old, regions, self._sites)
                        self.on_event(Event("rewrite_line", line, path=f.shown))
                        if region.feed(line):
                            stopped = True  # the rest is the file's own lines: spliced, not written
                            result.stats.region_ended = True
                            inner.cancel()
                            break
                        if region.runaway():  # a model writing on: the answer ends at its last match
                            region.cut()
                            ended = True
                            inner.cancel()
                            break
                        if region.behind:  # a part already written, again: the answer is over
                            region, ended = None, True
                            inner.cancel()
                            break
                    if stopped or lines.state != "done":
                        break
                    if region is not None:  # the model closed its block itself
                        regions.append(region)
                    region = None
                    if grammar is None:
                        ended = True
                        inner.cancel()
                        break
                    pending = lines.next_block()
                if lines.chatter:  # prose after the blocks: the answer's code is over
                    ended = True
                    inner.cancel()
            if not (stopped or ended) and lines.state == "code":
                for line in lines.finish():  # the model stopped inside a block, without a newline
                    region = region or next_region(old, regions, self._sites)
                    region.feed(line)
            result.stats.add(reply, started)
            budget -= max(1, reply.tokens)
            if region is not None:  # stopped, cut off, or closed by a fence with no newline after it
                regions.append(region)
            answer = "".join(f"{fence_open}{''.join(x + chr(10) for x in r.written)}```\n" for r in regions)
            if cancel.cancelled:
                result.status = "cancelled"
                return None
            if not stopped or not self.can_prefix or len(regions) >= MAX_REGIONS:
                break
        result.answer = answer  # the latest answer: a retry's conversation holds the earlier one
        truncated = reply is not None and reply.finish_reason == "length" and lines.state == "code"
        if not regions or truncated:
            try:  # an answer with no code block may still be the file, unfenced (extract_code)
                return extract_code(reply.text if reply else "", original=model_text, truncated=truncated), False
            except MalformedOutputError as err:
                result.status, result.errors = "malformed", [str(err)]
                result.stats.well_formed = False
                return None
        # a region written again after a stop (a model that loops) says nothing new
        regions = [r for i, r in enumerate(regions) if all(r.written != q.written for q in regions[:i])]
        result.stats.regions = len(regions)
        if len(regions) == 1 and regions[0].whole_file():  # a full rewrite (functions moved, say): not a region
            return "".join(x + "\n" for x in regions[0].written), False
        placed = in_order(regions)
        if len(placed) < len(regions) and placed:
            # measured: after its edit, SmolLM2 wrote a block of made-up code that is nowhere in the
            # file; the blocks that place stand, and the user is told what was left out
            left = len(regions) - len(placed)
            self.on_event(Event("status", f"{f.shown}: left out {left} code block(s) of the answer that match no "
                                          "place of the file after the blocks before them", path=f.shown))
        spliced = splice(model_text, placed) if placed else None
        if spliced is not None:
            return spliced[0], True
        if len(regions) == 1:  # no line of it is in the file: the answer is the whole new file
            return "".join(x + "\n" for x in regions[0].written), False
        result.status, result.errors = "malformed", [
            "none of the answer's code blocks could be placed in the file (each must copy at least one "
            "line of it); nothing was written"]
        result.stats.well_formed = False
        return None


def rewrite_budget(file_tokens: int) -> int:
    """A rewrite's answer: the file again, and half as much room for what changes (256 at least)."""
    return file_tokens + max(256, file_tokens // 2)
