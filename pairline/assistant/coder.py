"""One edit turn, shared by `pairline edit` and `pairline chat`: ask the model, follow its answer as
it streams, apply the blocks in memory, hand failures back for one retry, and return the new
texts. Writing them is the caller's job (through `Workspace.apply`), so nothing is half-applied:
either every file of the turn is written or none is.

Every edited file passes `check.review` before the turn returns it: no lines lost that the
instruction did not ask to remove (a rewrite that stopped early gets the original's tail back), and
Python still parses with no name left undefined. A failure goes back to the model once, as its own
error; if it still fails, nothing is returned to write.

Two ways to edit (`choose_mode` picks one in auto mode):
- `blocks`: search/replace blocks, with RENAME (rope) and DELETE actions; several or new files;
- `rewrite` (rewrite_turns.py): a focused edit of a Python file's named definitions (focus.py), or a
  lazy rewrite of the file's regions (region.py), with the old code as the prediction (unchanged
  lines are accepted as drafts a verify step at a time).

A Python file whose instruction names definitions of it is shown as those definitions (its focus) in
either way: a small model finds its place in a short prompt, and the prompt is short to prefill.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from pairline.assistant import check, prompts
from pairline.assistant.client import Client
from pairline.assistant.delete import apply_delete, deletable, delete_targets
from pairline.assistant.edit_grammar import SEARCH_LONGEST, blocks_grammar
from pairline.assistant.edits import DIVIDER, BlockParser, DeleteAction, EditBlock, EditError, RenameAction, apply_block
from pairline.assistant.rename import apply_rename, names_bound, rename_targets
from pairline.assistant.rewrite import restore_layout
from pairline.assistant.rewrite_turns import RewriteTurns, rewrite_budget
from pairline.assistant.sites import find_sites, sites_message
from pairline.assistant.turn import Event, FileState, LinkedCancel, TurnResult, TurnStats, load_file
from pairline.assistant.workspace import Workspace
from pairline.engine.constraint import Grammar
from pairline.engine.generate import CancelToken
from pairline.errors import PairlineError

NO_OP = (
    "Every block's REPLACE part was the same as its SEARCH part, so nothing changed. Write each "
    "REPLACE part as the lines must read after the change the instruction asks for."
)


# the turn's data lives in turn.py; its users import it from here, with the coder
__all__ = ["Coder", "Event", "FileState", "LinkedCancel", "TurnResult", "TurnStats", "answer_primer", "choose_mode",
           "load_file", "max_tokens_for"]





def _replace_limit(block: EditBlock) -> int:
    """How many REPLACE lines a block may have: generous for a block that adds a function, far
    short of a whole file written into one."""
    return 4 * len(block.search) + 60


def _no_op(block: EditBlock) -> bool:
    return [line.rstrip() for line in block.search] == [line.rstrip() for line in block.replace]


def _same_block(a: EditBlock, b: EditBlock) -> bool:
    """Equal up to whitespace: a model that loops rarely repeats its spacing exactly."""

    def norm(lines: list[str]) -> list[str]:
        return [" ".join(x.split()) for x in lines if x.strip()]

    return a.path == b.path and norm(a.search) == norm(b.search) and norm(a.replace) == norm(b.replace)


def _rename_only(block: EditBlock, renames: list[RenameAction]) -> bool:
    """A block whose REPLACE is its SEARCH with the answer's RENAMEs done: rope does that (and every
    other reference). Measured: Qwen2.5-Coder-1.5B wrote `RENAME _isrecursive _is_recursive` and then
    a block renaming the `def` line, which left RENAME nothing to find."""
    search = "\n".join(block.search)
    after = search
    for r in renames:
        after = re.sub(rf"\b{re.escape(r.old.rpartition('.')[2])}\b", r.new, after)
    return after != search and after == "\n".join(block.replace)


def choose_mode(mode: str, files: list[FileState], instruction: str) -> str:
    """`auto`: a lazy rewrite (region.py) of one existing file, whatever its size; search/replace
    blocks for several files or a new one, and where a Python file's instruction asks for a rename
    or a deletion (RENAME and DELETE, which only blocks have: rope renames every reference).
    Measured on `pairline bench edit` (docs/benchmarks.md, issue 14)."""
    if mode != "auto":
        return mode
    if len(files) != 1 or files[0].text is None:
        return "blocks"
    f = files[0]
    if f.shown.endswith((".py", ".pyi")) and (
        rename_targets(instruction, f.model_text) or delete_targets(instruction, f.model_text)
    ):
        return "blocks"
    return "rewrite"


def answer_primer(prompt: prompts.EditPrompt, files: list[FileState], can_prefix: bool, constrained: bool) -> str:
    """The start of a search/replace answer, written for the model (the first file's name and the
    block opening), or "" where the prompt is not primed, the client cannot continue an answer, or
    the answer is decoded under the edit grammar (which forces what has no choice by itself, and
    leaves the choice between a block and a RENAME to the model). The chat's ahead prefill needs
    the very same text, so both take it from here."""
    return prompts.primer(prompt, files[0].shown) if can_prefix and files and not constrained else ""


def max_tokens_for(client: Client, files: list[FileState], mode: str) -> int:
    if mode == "rewrite":
        return rewrite_budget(client.count_tokens(files[0].model_text))
    return 1024


class Coder(RewriteTurns):
    """Runs edit turns over a set of files with one client."""

    def __init__(
        self,
        client: Client,
        ws: Workspace,
        *,
        on_event: Callable[[Event], None] | None = None,
        search_cap: int | None = -1,
        constrain: bool = True,
        hints: bool = True,
        whole_lines: bool = True,
        focus: bool = True,
    ):
        self.client = client
        self.focus = focus  # a Python file's rewrite shows the definitions the instruction names (focus.py)
        # a terminal is shown whole lines only, so a line cut by a stop or a retry is never printed;
        # a page can redraw, and shows each piece as it comes (its first token is its TTFT)
        self.whole_lines = whole_lines
        # answers decoded under the edit grammars (edit_grammar.py), where the client can: a SEARCH
        # part that is not in the file, or a rewrite that stops early, cannot be written
        self.constrain = constrain and client.supports_grammar
        self._grammar_texts: list[str] = []  # the texts the latest blocks grammar was built on
        self._instruction = ""  # the turn's, for the grammar: it offers RENAME only where asked
        self._sites: frozenset[int] = frozenset()  # a rewrite's: lines its regions do not end before
        self.hints = hints  # list the lines the instruction's names are on (sites.py)
        self.ws = ws
        self.on_event = on_event or (lambda e: None)
        self.prompt = prompts.prompt_for(client.family)
        # -1: the measured default for this model; None or 0: no cap. A cap needs a client that can
        # continue a started answer (a forced divider), and so does priming.
        self.can_prefix = client.supports_prefix
        cap = prompts.SEARCH_CAP.get(client.model_name) if search_cap == -1 else (search_cap or None)
        self.search_cap = cap if self.can_prefix else None

    def run(
        self,
        files: list[FileState],
        instruction: str,
        *,
        mode: str = "auto",
        cancel: CancelToken | None = None,
        history: list[dict] | None = None,
        max_tokens: int | None = None,
    ) -> TurnResult:
        if not instruction.strip():
            raise PairlineError("the instruction is empty; say what to change")
        if not files:
            raise PairlineError("no files to edit; name at least one")
        cancel = cancel or CancelToken()
        mode = choose_mode(mode, files, instruction)
        if mode == "rewrite":
            if len(files) != 1 or files[0].text is None:
                raise PairlineError("--rewrite takes exactly one existing file")
            return self._rewrite(files[0], instruction, cancel, max_tokens)
        texts = {f.shown: f.model_text for f in files}
        hints = sites_message(find_sites(texts, instruction)) if self.hints else ""
        messages = prompts.edit_messages(self.prompt, self._shown(files, instruction), instruction, hints)
        if history:
            messages = messages[:-1] + history + messages[-1:]
        return self.run_blocks(files, messages, cancel=cancel, max_tokens=max_tokens, instruction=instruction)

    # ---------------------------------------------------------------- search/replace

    def _shown(self, files: list[FileState], instruction: str) -> dict[str, str]:
        """Each file as the blocks prompt shows it: a Python file's focus (focus.py) where the
        instruction names definitions of it, else the whole file. The grammar and the blocks still
        work on the whole file: a SEARCH part quotes lines that are there, shown or not."""
        out = {}
        for f in files:
            focus = self._focus(f, instruction)
            out[f.shown] = focus.text if focus is not None else f.model_text
        return out

    def _ask(
        self,
        messages: list[dict],
        prefix: str,
        cancel: CancelToken,
        max_tokens: int,
        result: TurnResult,
        applied: tuple[EditBlock, ...] = (),
        grammar: Grammar | None = None,
    ):
        """Stream one answer, parsing blocks as they close. With a search cap, a SEARCH part that
        reaches the cap is cut there: the request stops and a new one continues the same answer
        after a forced divider (the engine's prefix reuse makes that a few tokens of prefill)."""
        parser = BlockParser(default_path=self._default_path(result))
        self.on_event(Event("text", prefix))
        parser.feed(prefix)
        blocks: list[EditBlock] = []
        answer, reply = prefix, None
        budget = max_tokens
        while budget > 0:
            started = time.perf_counter()
            inner = LinkedCancel(cancel)
            reply = self.client.stream(messages, max_tokens=budget, prefix=answer, cancel=inner, grammar=grammar)
            forced = looping = False
            held = ""  # text is passed on a whole line at a time, so a cut line is never shown
            kept = ""  # the text read before this request was stopped (a verify step may emit more after)
            try:
                for delta in reply:
                    if forced or looping:
                        continue  # cancelled: the engine stops within a step; drain it so its lock is released
                    kept += delta
                    if not self.whole_lines:
                        self.on_event(Event("text", delta))
                    elif "\n" in (held := held + delta):
                        cut = held.rfind("\n") + 1
                        self.on_event(Event("text", held[:cut]))
                        held = held[cut:]
                    for block in parser.feed(delta):
                        if any(_same_block(b, block) for b in blocks):
                            looping = True  # the model repeats itself: the answer is over
                            inner.cancel()
                            continue
                        if any(_same_block(b, block) for b in applied):
                            continue  # a retry repeating a block that already applied: skip it
                        blocks.append(block)
                        self.on_event(Event("block", path=block.path or "", block=block))
                    partial = parser.partial
                    if parser.state == "replace" and partial and len(partial.replace) > _replace_limit(partial):
                        # a REPLACE part that runs on and on is a model copying the file or looping
                        # (measured: 0.5B answers that spent their whole budget inside one); the
                        # blocks before it stand
                        parser.drop_partial_block()
                        looping = True
                        inner.cancel()
                    for actions in (parser.renames, parser.deletes):
                        if actions and actions[-1] in actions[:-1]:
                            actions.pop()  # the same action again: the model repeats itself, the answer is over
                            looping = True
                            inner.cancel()
                    cap = self.search_cap
                    if (
                        cap
                        and parser.state == "search"
                        and parser.partial
                        and len(parser.partial.search) >= cap
                        and (not self.constrain or self._unique(parser.partial.search))
                    ):  # under the grammar, a SEARCH part ends only once it matches one place
                        if blocks and not self._in_files(parser.partial.search[0], result):
                            # a small model that has written its blocks drifts into invented ones
                            # (often the prompt's example): a SEARCH that starts with a line found
                            # in no file ends the answer instead of failing the turn
                            looping = True
                            parser.drop_partial_block()
                        else:
                            forced = True
                        inner.cancel()
            finally:
                reply.close()
            if held and not forced:
                self.on_event(Event("text", held))
            result.stats.add(reply, started)
            budget -= max(1, reply.tokens)
            text = kept if (forced or looping) else reply.text
            if looping:
                answer += text
                break
            if not forced or cancel.cancelled:
                answer += text
                break
            # keep the answer up to the capped SEARCH's last line, then force the divider
            answer += text[: text.rfind("\n") + 1]
            parser.drop_partial_line()
            parser.partial.capped = True
            parser.feed(DIVIDER + "\n")
            answer += DIVIDER + "\n"
            self.on_event(Event("text", DIVIDER + "\n"))
        for block in parser.finish():
            blocks.append(block)
            self.on_event(Event("block", path=block.path or "", block=block))
        if reply is not None and cancel.cancelled:
            reply.finish_reason = "cancelled"
        return reply, answer, parser, blocks

    def _unique(self, search: list[str]) -> bool:
        """The lines appear, whole and in a row, at one place of the texts the grammar was built on
        (and no more of them than it lets a SEARCH part need): the grammar then takes a divider."""
        if len(search) >= SEARCH_LONGEST:
            return False
        want = "".join(line + "\n" for line in search)
        count = 0
        for text in self._grammar_texts:
            text = text if text.endswith("\n") else text + "\n"
            count += sum(1 for i in range(len(text)) if text.startswith(want, i) and (i == 0 or text[i - 1] == "\n"))
        return count == 1

    def _in_files(self, line: str, result: TurnResult) -> bool:
        want = " ".join(line.split())
        if not want:
            return True
        return any(want in " ".join(f.model_text.split()) for f in result.files.values())

    def _default_path(self, result: TurnResult) -> str | None:
        return next(iter(result.files.values())).shown if len(result.files) == 1 else None

    def run_blocks(
        self,
        files: list[FileState],
        messages: list[dict],
        *,
        prefix: str | None = None,
        cancel: CancelToken | None = None,
        max_tokens: int | None = None,
        instruction: str = "",
    ) -> TurnResult:
        """One search/replace turn on prepared messages (the chat builds its own history).
        `instruction` is what the user asked for this turn: the check uses it to tell a deletion
        that was asked for from one that was not (without it, no deletion is taken as asked)."""
        cancel = cancel or CancelToken()
        self._instruction = instruction
        result = TurnResult("unchanged", files={f.real: f for f in files})
        result.stats.mode = "blocks"
        if prefix is None:
            prefix = answer_primer(self.prompt, files, self.can_prefix, self.constrain)
        budget = max_tokens or 1024
        original = {f.real: f.model_text for f in files}
        current, convo, applied = self._blocks_round(messages, prefix, cancel, budget, result, dict(original))
        if current is None:
            return result
        errors, restart = self._check(current, result, instruction, rewrite=False)
        if errors and not cancel.cancelled:
            # the check's own retry, once. Lines lost: the model writes its blocks again on the file
            # as it was (a small model cannot put a deleted function back with a block). Only broken
            # Python (a rename that left a use behind): its blocks stay, and it adds the fixes.
            result.stats.retried = result.stats.check_retried = True
            self.on_event(Event("retry", "\n".join(errors)))
            again = [*convo, {"role": "user", "content": check.retry_message(errors, "blocks" if restart else "fix")}]
            base, skip = (dict(original), ()) if restart else (dict(current), applied)
            current, _, _ = self._blocks_round(again, prefix, cancel, budget, result, base, retry=False, applied=skip)
            if current is None:
                return result
            errors, _ = self._check(current, result, instruction, rewrite=False)
        if errors:
            result.status, result.errors = "malformed", errors
            return result
        self._collect(current, result)
        return result

    def _blocks_round(
        self,
        messages: list[dict],
        prefix: str,
        cancel: CancelToken,
        budget: int,
        result: TurnResult,
        current: dict[Path, str],
        retry: bool = True,
        applied: tuple[EditBlock, ...] = (),
    ) -> tuple[dict[Path, str] | None, list[dict], tuple[EditBlock, ...]]:
        """Ask for blocks and apply them to `current` in memory, with one retry for blocks that fail
        (`retry`); blocks equal to one of `applied` are skipped (already in `current`). The new
        texts, the conversation so far and the blocks applied; None (status set) if cancelled or
        if blocks still fail."""
        grammar = self._blocks_grammar(current, result)
        reply, answer, parser, blocks = self._ask(messages, prefix, cancel, budget, result, applied, grammar)
        blocks = [b for b in blocks if not _rename_only(b, parser.renames)]
        result.answer = f"{result.answer}\n{answer}" if result.answer else answer
        convo = [*messages, {"role": "assistant", "content": answer}]
        result.stats.blocks += len(blocks)
        if retry:  # the turn's first answer: parsed cleanly, with at least one block
            result.stats.well_formed = parser.well_formed and bool(blocks or parser.renames)
        if cancel.cancelled:
            result.status = "cancelled"
            return None, convo, ()
        failed = self._apply_all(blocks, current, result)
        problems = [why for _, why in failed] + self._act(parser, current, result) + [
            f"The answer was malformed: {m.message} (line {m.line})." for m in parser.malformed
        ]
        if blocks and not (parser.renames or parser.deletes) and all(_no_op(b) for b in blocks) and not problems:
            # a small model "edits" by copying lines unchanged (measured: most of the 0.5B model's
            # docstring answers); say so once, as a failed edit
            problems = [NO_OP]
        if problems and retry:
            # one retry: the errors go back to the model, which answers with the failed blocks only
            result.stats.retried = True
            self.on_event(Event("retry", "\n".join(problems)))
            n_good = len(blocks) - len(failed)
            # new lists, never appended to: a client may keep the messages it was given
            convo = [*convo, {"role": "user", "content": prompts.retry_message(problems, n_good)}]
            good = tuple(b for b in blocks if all(b is not f for f, _ in failed))
            grammar = self._blocks_grammar(current, result)  # the good blocks are in `current` now
            reply, answer2, parser2, blocks2 = self._ask(convo, prefix, cancel, budget, result, (*applied, *good),
                                                         grammar)
            blocks2 = [b for b in blocks2 if not _rename_only(b, parser.renames + parser2.renames)]
            result.answer += "\n" + answer2
            convo = [*convo, {"role": "assistant", "content": answer2}]
            result.stats.blocks += len(blocks2)
            if cancel.cancelled:
                result.status = "cancelled"
                return None, convo, ()
            failed = self._apply_all(blocks2, current, result)
            blocks = [*good, *blocks2]
            problems = [why for _, why in failed] + self._act(parser2, current, result) + [
                f"The answer was malformed: {m.message} (line {m.line})." for m in parser2.malformed
            ]
        if problems:
            result.status, result.errors = "malformed", problems
            return None, convo, ()
        return current, convo, (*applied, *blocks)

    def _blocks_grammar(self, current: dict[Path, str], result: TurnResult) -> Grammar | None:
        """Blocks whose SEARCH parts are runs of lines of the texts they will be applied to."""
        if not self.constrain:
            return None
        texts = {real: None if f.text is None else current.get(real, f.model_text) for real, f in result.files.items()}
        self._grammar_texts = [t for t in texts.values() if t]
        return blocks_grammar([(f.shown, texts[real]) for real, f in result.files.items()], self._instruction)

    def _check(
        self, current: dict[Path, str], result: TurnResult, instruction: str, *, rewrite: bool
    ) -> tuple[list[str], bool]:
        """`check.review` on every file the edit changed; repaired texts replace the model's in
        `current`, and their notes go to the result. The errors, and whether lines were lost (else
        only the Python check failed)."""
        errors: list[str] = []
        notes: list[str] = []
        lost = False
        changed = {
            real: text
            for real, text in current.items()
            if result.files[real].text is None or text != result.files[real].model_text
        }
        edited = [(result.files[real].shown, result.files[real].old_model_text, text) for real, text in changed.items()]
        verdicts = check.review_files(edited, instruction, rewrite=rewrite)
        for real, verdict in zip(changed, verdicts, strict=True):
            state = result.files[real]
            current[real] = verdict.text
            for err in verdict.errors:
                self.on_event(Event("check", err, path=state.shown))
            errors += verdict.errors
            notes += verdict.notes
            lost = lost or bool(verdict.lost)
        result.notes = notes
        result.stats.repaired = bool(notes)
        return errors, lost

    def _apply_all(
        self, blocks: list[EditBlock], current: dict[Path, str], result: TurnResult
    ) -> list[tuple[EditBlock, str]]:
        """Apply in order to the in-memory texts; the blocks that failed, with why."""
        failed = []
        for block in blocks:
            try:
                real = self._target(block.path, result, create=not any(s.strip() for s in block.search))
                current[real], _ = apply_block(current.get(real, ""), block, path=block.path)
            except EditError as err:
                failed.append((block, str(err)))
                self.on_event(Event("error", str(err), path=block.path or ""))
            except PairlineError as err:
                failed.append((block, f"{block.path}: {err}"))
                self.on_event(Event("error", str(err), path=block.path or ""))
        return failed

    def _act(self, parser: BlockParser, current: dict[Path, str], result: TurnResult) -> list[str]:
        """The answer's actions after its blocks: deletions, then renames; their errors."""
        return self._delete_all(parser.deletes, current, result) + self._rename_all(parser.renames, current, result)

    def _delete_all(self, deletes: list[DeleteAction], current: dict[Path, str], result: TurnResult) -> list[str]:
        """Apply each DELETE to its file's in-memory text; the errors of those that failed. One whose
        definition is already gone (a retry repeating it) is skipped."""
        problems: list[str] = []
        for action in dict.fromkeys(deletes):  # the same DELETE twice is one
            result.stats.deletes += 1
            try:
                real = self._existing(action.path, result)
                text = current.get(real, result.files[real].model_text)
                original = result.files[real].model_text if result.files[real].text is not None else ""
                if action.name not in deletable(text) and action.name in deletable(original):
                    continue  # deleted by an earlier answer of this turn
                current[real] = apply_delete(text, action.name)
            except PairlineError as err:
                problems.append(str(err))
                self.on_event(Event("error", str(err), path=action.path or ""))
                continue
            self.on_event(Event("delete", action.name, path=result.files[real].shown))
        return problems

    def _rename_all(self, renames: list[RenameAction], current: dict[Path, str], result: TurnResult) -> list[str]:
        """Apply each RENAME (after the blocks, whose SEARCH parts quote the text before it) to the
        in-memory texts of every file of the turn; the errors of those that failed. A rename that
        is already done (a retry repeating it) is skipped."""
        problems: list[str] = []
        for action in renames:
            result.stats.renames += 1
            try:
                real = self._existing(action.path, result)
                shown = result.files[real].shown
                texts = {f.shown: current.get(r, f.model_text) for r, f in result.files.items() if f.text is not None}
                bound = names_bound(texts[shown])
                if action.old.rpartition(".")[2] not in bound and action.new in bound:
                    continue
                changed = apply_rename(texts, shown, action.old, action.new)
            except PairlineError as err:
                problems.append(str(err))
                self.on_event(Event("error", str(err), path=action.path or ""))
                continue
            by_shown = {f.shown: r for r, f in result.files.items()}
            for name, text in changed.items():
                current[by_shown[name]] = text
            self.on_event(Event("rename", f"{action.old} → {action.new}", path=shown))
        return problems

    def _existing(self, path: str | None, result: TurnResult) -> Path:
        """The existing file of this edit an action names (an action never creates a file: a model
        copying the prompt's example names geometry.py)."""
        real = self._target(path, result, create=False)
        if result.files[real].text is None:
            raise EditError(f"{path}: does not exist yet; RENAME and DELETE work on existing files")
        return real

    def _target(self, path: str | None, result: TurnResult, create: bool) -> Path:
        """The chat file `path` names (by its path, or uniquely by its file name); a new file only
        where `create` (a block with an empty SEARCH)."""
        name = (path or "").strip().removeprefix("./")
        for f in result.files.values():
            if f.shown == name:
                return f.real
        by_base = [f for f in result.files.values() if Path(f.shown).name == Path(name).name]
        if len(by_base) == 1:
            return by_base[0].real
        if not create:
            raise EditError(f"{name}: not a file in this edit; the files are {', '.join(self._names(result))}")
        state = load_file(self.ws, self.ws.root / name)
        if state.text is not None:
            raise EditError(f"{name}: exists but is not in this edit; add it first")
        result.files[state.real] = state
        return state.real

    def _names(self, result: TurnResult) -> list[str]:
        return [f.shown for f in result.files.values()]

    def _collect(self, current: dict[Path, str], result: TurnResult) -> None:
        for note in result.notes:  # said once the edit is final (a retried attempt's repair is not)
            self.on_event(Event("status", note))
        for real, model_text in current.items():
            state = result.files[real]
            new = model_text if state.text is None else restore_layout(state.text, model_text)
            if state.text is None or new != state.text:
                result.new_texts[real] = new
        result.status = "changed" if result.new_texts else "unchanged"
