"""Deep mode, the loop behind `pairline agent "task"` and `/deep` in the chat.

A loop on the deep tier: the model replies with one action (`agent_format`), the action runs
(`agent_tools`: files through the sandbox's path checks, edits through the same applier and
workspace as the real-time assistant, commands and tests in the sandbox), and its result goes back
as the next user turn. It stops when the model calls `done`, when a budget (steps, wall time,
generated tokens) is used up, on Ctrl-C, or when the context cannot hold the next turn, and always
ends with a summary and the combined diff since the run's start.

Every run writes a JSONL trajectory (`trajectory.py`) under `cache_dir()/runs`, one event a line,
flushed and synced as it goes, so a crash leaves a usable file; `Agent.resume` rebuilds the
conversation from it and goes on with the budgets' used amounts. docs/agent.md describes the events
and the sandbox's limits. The `pairline agent` command is `agent_cmd.py`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pairline.assistant import agent_format as fmt
from pairline.assistant.agent_context import failure_files, named_files, shown_in
from pairline.assistant.agent_mask import Repeats, cat_paths, read_only
from pairline.assistant.agent_result import AgentResult, Budgets, Msg, Used
from pairline.assistant.agent_tools import ToolResult, Tools, repo_files
from pairline.assistant.client import Client
from pairline.assistant.coder import LinkedCancel
from pairline.assistant.diffs import unified_diff
from pairline.assistant.gitsafe import GitTampered, git_head, git_is_ancestor, git_output, git_status
from pairline.assistant.sandbox import Limits, Sandbox
from pairline.assistant.trajectory import TRAJECTORY_VERSION, Trajectory, find_run, load_trajectory, runs_dir
from pairline.assistant.workspace import Workspace
from pairline.engine.constraint import Grammar
from pairline.engine.generate import CancelToken
from pairline.errors import PairlineError

DEFAULT_TEST_CMD = "python -m pytest -q -p no:cacheprovider"  # no .pytest_cache left in the user's repo
OBS_KEEP_FULL = 2  # the latest observations are never condensed
FIRST_TEST_S = 60.0  # the test run before the first step stops here (the model can run them longer itself)
SHOWN_CHARS = 8000  # files shown whole in the first message, all together
# --------------------------------------------------------------------------- the agent


class Agent:
    """One run. `run()` loops until the model is done or a budget is; it returns the result and
    leaves the trajectory complete. `on_event` sees every trajectory event, plus `delta` events
    (the model's text as it streams) that the trajectory does not keep."""

    def __init__(
        self,
        client: Client,
        ws: Workspace,
        task: str,
        *,
        budgets: Budgets | None = None,
        test_cmd: str = DEFAULT_TEST_CMD,
        context: str = "",
        n_ctx: int = 8192,
        turn_tokens: int = 1024,
        cmd_timeout: float = 120.0,
        on_event: Callable[[dict], None] | None = None,
        sandbox: Sandbox | None = None,
        example: bool = True,
        nudge: bool = True,
        info: dict | None = None,
        allow_weak_sandbox: bool = False,  # run commands even where the kernel lacks a protection
        first_test: bool = True,  # run the tests once before the first step and show what fails
        mask: bool = True,  # decode each reply under a grammar that masks repeated looks (agent_mask.py)
    ):
        if not task.strip():
            raise PairlineError("the task is empty; say what the agent should do")
        self.client = client
        self.ws = ws
        self.task = task.strip()
        self.budgets = budgets or Budgets()
        self.budgets.check()
        self.test_cmd = test_cmd
        self.n_ctx = _model_ctx(client, n_ctx)
        self.turn_tokens = turn_tokens
        self.on_event = on_event or (lambda e: None)
        self.sandbox = sandbox or Sandbox(ws.root, Limits(timeout_s=cmd_timeout, output_bytes=64_000),
                                          allow_weak=allow_weak_sandbox)
        self.tools = Tools(ws, self.sandbox, test_cmd, cmd_timeout=cmd_timeout)
        self.example = example
        self.nudge = nudge
        self.first_test = first_test
        self.mask = mask
        self.info = info or {}
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.path = runs_dir() / f"{self.run_id}.jsonl"
        self.used = Used()
        # what the model has seen of the repository: a file it has not is read before it is edited
        self.known: set[str] = set()
        self.repeats = Repeats(test_cmd, self.tools.relpath)
        self._files: list[str] | None = None  # the repository's files, until something may change them
        self._context = context
        self.convo: list[Msg] = [Msg("user", self._first_message(context))]
        self.start_commit = git_head(ws.root) if ws.git else None
        self.start_status = git_status(ws.root) if ws.git else set()
        self.commits: list[str] = []
        self.edits = 0
        self.last_test: dict | None = None
        self.done_summary: str | None = None
        self.resumed_from: int | None = None  # events already in the file (a resumed run)
        self.tampered = False
        self._edit_seen: dict[str, int] = {}  # an edit's blocks -> its step, until the next edit
        self._grammar_ok = True  # False once the client could not use the mask's grammar
        self._asked_text = False  # the reply in flight has sent text
        self._untested = False  # an edit applied since the last test run
        self._done_refused = False
        self._session_t0 = 0.0
        self._traj: Trajectory | None = None
        self._base = fmt.base_messages(test_cmd, example)
        self._base_tokens = -1

    # ---------------------------------------------------------------- the first message

    def _repo_files(self) -> list[str]:
        if self._files is None:
            self._files = repo_files(self.ws.root, self.ws.git)
        return self._files

    def _first_message(self, context: str, tests: ToolResult | None = None) -> str:
        """The task, the repository's files, and what the model should see before it acts: the files
        the task names and, when the tests fail (`tests`, the run before the first step), the failing
        test files and the code they import, shown whole while they fit. Everything shown counts as
        read (agent_mask.py masks reading it again)."""
        files = self._repo_files()
        listing = "\n".join(files[:60]) + (f"\n[... and {len(files) - 60} more]" if len(files) > 60 else "")
        parts = [f"Task: {self.task}", f"The repository has {len(files)} files:\n{listing}",
                 f"The tests run with `{self.test_cmd}`."]
        self.repeats.seen_listing(0, complete=len(files) <= 60)
        self.known = {f for f in files if shown_in(context, f)}
        for name in self.known:
            self.repeats.seen_file(name, 0)
        budget = SHOWN_CHARS
        named, budget = self._show(named_files(self.task, files, context), budget)
        if named:
            parts.append("Files named in the task, as they are now:\n\n" + "\n\n".join(named))
        if tests is not None:
            parts.append("The tests were run once before your first step:\n"
                         + fmt.truncate_middle(tests.observation, 2500))
            if tests.data.get("exit_code") not in (0, None, 5):
                more = [f for f in failure_files(tests.output, self.ws.root, files) if f not in self.known]
                failing, budget = self._show(more, budget)
                if failing:
                    parts.append("The failing tests and the code they use, as they are now:\n\n" + "\n\n".join(failing))
        if context.strip():
            parts.append(context.strip())
        return "\n\n".join(parts)

    def _show(self, names: list[str], budget: int) -> tuple[list[str], int]:
        """The small files among `names`, each whole in a fence, inside `budget` characters: a small
        model that has not seen a file invents its lines when it edits it (measured on the 1.5B model)."""
        from pairline.assistant.rewrite import fence_for, language_for, wrap
        from pairline.assistant.workspace import read_text_file

        shown = []
        for name in names:
            if name in self.known:
                continue
            try:
                text, _ = read_text_file(self.ws.root / name)
            except PairlineError:
                continue
            if not text.strip() or len(text) > budget:
                continue  # an empty __init__.py says nothing
            budget -= len(text)
            shown.append(f"{name}\n{wrap(text, language_for(name), fence_for(text))}")
            self.known.add(name)
            self.repeats.seen_file(name, 0)
        return shown, budget

    # ---------------------------------------------------------------- events

    def elapsed(self) -> float:
        return self.used.time_s + (time.perf_counter() - self._session_t0 if self._session_t0 else 0.0)

    def emit(self, kind: str, **fields) -> dict:
        event = {"type": kind, **fields, "elapsed_s": round(self.elapsed(), 3), "time": time.time()}
        if self._traj is not None:
            self._traj.write(event)
        self.on_event(event)
        return event

    def _header(self) -> dict:
        return {
            "version": TRAJECTORY_VERSION, "run_id": self.run_id, "trajectory": str(self.path), "task": self.task,
            "model": self.client.model_name, **self.info,
            "repo": str(self.ws.root), "git": self.ws.git, "start_commit": self.start_commit,
            "start_dirty": sorted(self.start_status), "budgets": asdict(self.budgets),
            "sandbox": list(self.sandbox.protections), "test_cmd": self.test_cmd, "n_ctx": self.n_ctx,
            "turn_tokens": self.turn_tokens, "example": self.example, "first_message": self.convo[0].content,
            "shown_files": sorted(self.known), "mask": self.mask and self.client.supports_grammar,
        }

    # ---------------------------------------------------------------- the loop

    def run(self, cancel: CancelToken | None = None) -> AgentResult:
        cancel = cancel or CancelToken()
        self._session_t0 = time.perf_counter()
        if self.resumed_from is not None:
            Trajectory.repair(self.path)
        self._traj = Trajectory(self.path)
        reason, summary = "error", ""
        try:
            if self.resumed_from is None:
                tests = self._first_tests(cancel) if self.first_test else None
                self.emit("run", **self._header())
                if tests is not None:
                    self.emit("tool", step=0, name="test", args={}, ok=tests.ok, observation=tests.observation,
                              output=tests.output, **tests.data)
            else:
                self.emit("resume", run_id=self.run_id, trajectory=str(self.path), budgets=asdict(self.budgets),
                          head=git_head(self.ws.root) if self.ws.git else None, used_steps=self.used.steps,
                          used_tokens=self.used.tokens)
            reason, summary = self._loop(cancel)
        except GitTampered as err:
            self.tampered = True
            reason, summary = "git_tampered", str(err)
        except PairlineError as err:
            reason, summary = "error", str(err)
        except KeyboardInterrupt:
            reason, summary = "interrupted", ""
        try:
            return self._finish(reason, summary)
        finally:
            self._traj.close()

    def _first_tests(self, cancel: CancelToken) -> ToolResult | None:
        """Run the tests once before the first step; the first message then says how they fail and
        shows the failing test files and the code they import. None where no command may run."""
        limit = min(FIRST_TEST_S, self.tools.cmd_timeout, max(1.0, self.budgets.max_time_s - self.elapsed()))
        r = self.tools.test("", timeout=limit, cancel=cancel)
        if r.data.get("exit_code") is None and not r.data.get("timed_out"):
            return None  # refused (a weak sandbox) or cancelled: the model finds out itself
        self.last_test = {"command": r.data.get("command"), "exit_code": r.data.get("exit_code")}
        if not r.data.get("timed_out"):
            self.repeats.seen_tests(0, r.data.get("exit_code"))
        self.convo[0] = Msg("user", self._first_message(self._context, r))
        return r

    def _budget_reason(self, cancel: CancelToken) -> str | None:
        if cancel.cancelled:
            return "interrupted"
        if self.used.steps >= self.budgets.max_steps:
            return "max_steps"
        if self.elapsed() >= self.budgets.max_time_s:
            return "max_time"
        if self.budgets.max_tokens - self.used.tokens < 16:
            return "max_tokens"
        return None

    def _loop(self, cancel: CancelToken) -> tuple[str, str]:
        while True:
            reason = self._budget_reason(cancel)
            if reason:
                return reason, ""
            fitted = self._fit()
            if fitted is None:
                return "context_full", f"the conversation needs more than the model's {self.n_ctx} tokens"
            messages, room = fitted
            step = self.used.steps + 1
            # a result condensed out of the context is no longer one the model has
            self.repeats.forget({m.step for m in self.convo if m.condensed and m.step})
            grammar, masked = self._grammar()
            text, stats, stop = self._ask(messages, room, cancel, step, grammar=grammar)
            self.used.tokens += stats["tokens"]
            self.used.prompt_tokens += stats.get("prompt_tokens", 0)
            try:
                action, error = fmt.parse_reply(text, self.test_cmd), None
            except fmt.ActionError as err:
                action, error = None, str(err)
            if action is None and stop is None and self._may_nudge(error, stats):
                # a thought and no action (small models often end the turn there): the same step goes
                # on from the thought with an opened tool call, so the model only picks the tool
                prefix = (text.rstrip() + "\n" if text.strip() else "") + fmt.NUDGE
                room2 = room - self.client.count_tokens(prefix)
                more, stats2, stop = self._ask(messages, room2, cancel, step, prefix=prefix,
                                               grammar=grammar if self._grammar_ok else None)
                self.used.tokens += stats2["tokens"]
                stats = {**stats, "tokens": stats["tokens"] + stats2["tokens"], "nudged": True,
                         "wall_s": round(stats["wall_s"] + stats2["wall_s"], 3)}
                text = prefix + more
                try:
                    action, error = fmt.parse_reply(text, self.test_cmd), None
                    action.notes.append("Your reply had no action, so it was continued with a tool call.")
                except fmt.ActionError as err:
                    action, error = None, str(err)
            if action is None and stats["finish_reason"] == "loop":
                error = f"your reply was cut: it repeated the same lines over and over. {error}"
            self.used.steps += 1
            kept = fmt.kept_text(text, action)
            if masked and self._grammar_ok:
                stats["masked"] = masked
            self.emit("turn", step=step, text=kept, raw_chars=len(text), **stats)
            if stop == "interrupted":
                return "interrupted", ""
            if stop == "max_time":
                return "max_time", ""
            body, short, finished = self._act(step, action, error, cancel)
            obs = fmt.observation(body, self.budgets.max_steps - self.used.steps)
            short_obs = fmt.observation(short, self.budgets.max_steps - self.used.steps)
            self.convo += [Msg("assistant", kept), Msg("user", obs, short=short_obs, step=step)]
            self.emit("observation", step=step, content=obs, short=short_obs)
            if finished:
                return "done", self.done_summary or ""
            if cancel.cancelled:
                return "interrupted", ""

    def _may_nudge(self, error: str | None, stats: dict) -> bool:
        # only a short reply the model itself ended: a thought. A long one (a loop, an invented
        # result) gets the error instead.
        return (self.nudge and bool(error) and error.startswith("No action found")
                and stats["finish_reason"] == "stop" and stats["tokens"] <= 80
                and self.client.supports_prefix
                and self.budgets.max_tokens - self.used.tokens >= 32)

    def _grammar(self) -> tuple[Grammar | None, list[str]]:
        """The next reply's grammar: any reply but one that repeats a look whose result the model has
        (agent_mask.py), and what it masks in words. None where nothing is masked, the client cannot
        decode under a grammar (the harness refuses repeats instead), or the mask is off."""
        if not (self.mask and self._grammar_ok and self.client.supports_grammar):
            return None, []
        # Qwen2.5 writes <tool_call> as one special token, which a grammar must name to allow
        return self.repeats.grammar(self._repo_files(), special_tokens=self.client.family == "qwen2")

    def _ask(self, messages: list[dict], room: int, cancel: CancelToken, step: int,
             prefix: str = "", grammar: Grammar | None = None) -> tuple[str, dict, str | None]:
        """One model turn (`_ask_once`). A grammar the engine cannot use (a model without the special
        tokens it names, a server that refuses it) turns the mask off for the rest of the run, said in
        a `mask_off` event, and the turn is asked again without it."""
        try:
            return self._ask_once(messages, room, cancel, step, prefix, grammar)
        except PairlineError as err:
            if grammar is None or "grammar" not in str(err).lower() or self._asked_text:
                raise
            self._grammar_ok = False
            self.emit("mask_off", step=step, error=str(err)[:500])
            return self._ask_once(messages, room, cancel, step, prefix, None)

    def _ask_once(self, messages: list[dict], room: int, cancel: CancelToken, step: int,
                  prefix: str, grammar: Grammar | None) -> tuple[str, dict, str | None]:
        """One model turn, streamed; stopped early once its action is complete, and at the time
        budget (a timer cancels it, so even a long prefill stops on time)."""
        max_new = max(1, min(self.turn_tokens, self.budgets.max_tokens - self.used.tokens, room))
        inner = LinkedCancel(cancel)
        deadline = threading.Event()

        def times_up() -> None:
            deadline.set()
            inner.cancel()

        timer = threading.Timer(max(0.0, self.budgets.max_time_s - self.elapsed()), times_up)
        timer.daemon = True
        timer.start()
        # the engine can stop at a string (and re-use the KV); the remote protocol cannot, so there
        # the stream is cancelled by hand once the action is complete
        stop = fmt.STOPS if self.client.supports_stop else ()
        t0 = time.perf_counter()
        text, early, looped = "", False, False
        self._asked_text = False
        try:
            kw = {"prefix": prefix} if prefix else {}
            if grammar is not None:
                kw["grammar"] = grammar
            reply = self.client.stream(messages, max_tokens=max_new, stop=stop, cancel=inner, **kw)
            try:
                for delta in reply:
                    if early:
                        continue  # cancelled: it stops within a step; drain it so the engine is released
                    self._asked_text = True
                    text += delta
                    self.on_event({"type": "delta", "step": step, "text": delta})
                    if fmt.stop_point(text, self.test_cmd):
                        early = True
                        inner.cancel()
                        looped = fmt.looping(text)
            finally:
                reply.close()
        finally:
            timer.cancel()
        t = reply.timings
        stats = {
            "tokens": max(reply.tokens, reply.usage.completion_tokens),
            "prompt_tokens": reply.usage.prompt_tokens, "cached_tokens": reply.usage.cached_tokens,
            "max_tokens": max_new, "finish_reason": "loop" if looped else "stop" if early else reply.finish_reason,
            "ttft_s": round(t.ttft_s, 3) if t.ttft_s else None, "decode_tok_s": round(t.decode_tokens_per_s, 1),
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        stop_reason = "interrupted" if cancel.cancelled else "max_time" if deadline.is_set() else None
        return text, stats, stop_reason

    def _act(self, step: int, action: fmt.Action | None, error: str | None,
             cancel: CancelToken) -> tuple[str, str, bool]:
        """Run the action; (observation body, its condensed form, finished)."""
        if action is None:
            self.emit("tool", step=step, name="invalid", args={}, ok=False, observation=error)
            return f"error: {error}", f"error: {error[:300]}", False
        parts, shorts, finished, ok = [], [], False, True
        todo = [action]
        if action.name == "edit" and action.then is not None:
            todo.append(action.then)
        for i, act in enumerate(todo):
            if i and not ok:
                parts.append(f"Your {act.name} call after the edit was not run: the edit did not fully apply.")
                break
            look = self.repeats.repeat_of(act) if act.name != "edit" else None
            if look is not None:
                # a look whose result the model has (the mask keeps most of these from being written;
                # this catches the rest, and every one where the client has no grammar): not run
                result = ToolResult(self.repeats.refusal(look), False)
                self.emit("tool", step=step, name="repeat", args={"tool": act.name, **act.args}, ok=False,
                          observation=result.observation, repeat_of=look.step)
                parts.append(result.observation)
                shorts.append(f"[{act.describe()}: not run, a repeat]")
                ok = False
                continue
            again = self._repeat_edit(act, step)
            result = self._tool(act, step, cancel)
            ok = result.ok
            if again:
                parts.append(f"You did exactly this at step {again}: the same edit gives the same result. "
                             "Change it: copy the SEARCH lines exactly as the file has them, or do something else.")
            parts.append(result.observation)
            first = result.observation.splitlines()[0] if result.observation else ""
            shorts.append(f"[{act.describe()}: {first[:200]} (output dropped to save room)]")
            if act.name == "done" and result.ok:
                finished = True
        notes = action.notes + (action.then.notes if action.then else [])
        if notes:
            parts.append("Note: " + " ".join(notes))
        return "\n\n".join(parts), "\n".join(shorts), finished

    def _repeat_edit(self, act: fmt.Action, step: int) -> int | None:
        """The earlier step that made the same edit, if no other edit came between: it fails the same
        way (a repeat of one that applied changes nothing)."""
        if act.name != "edit":
            return None
        key = json.dumps([[b.path, b.search, b.replace] for b in act.blocks])
        earlier = self._edit_seen.get(key)
        self._edit_seen = {key: earlier or step}
        return earlier

    def _unread(self, act: fmt.Action) -> list[str]:
        """The existing files an edit changes that the model has not seen in this run."""
        out: list[str] = []
        for b in act.blocks:
            name = (b.path or "").strip().removeprefix("./")
            try:
                real = self.ws.resolve(self.sandbox.resolve(name))  # as the edit would: not in .git/
            except PairlineError:
                continue  # the edit itself says what is wrong with the path
            rel = self.tools.relpath(str(real))
            if rel and rel not in self.known and rel not in out and real.is_file():
                out.append(rel)
        return out

    def _show_unread(self, unread: list[str], step: int) -> ToolResult:
        """An edit of files the model has not read is not applied: it is shown them instead (it then
        has them, as after a read)."""
        views = []
        for rel in unread:
            r = self.tools.read(rel)
            views.append(r.observation)
            if r.ok:
                self.known.add(rel)
                first, last = r.data.get("lines") or (0, 0)
                n = r.data.get("of", 0)
                self.repeats.seen_file(rel, step, whole=n == 0 or (first <= 1 and last >= n))
        names = ", ".join(unread)
        it = "it" if len(unread) == 1 else "them"
        obs = (f"Not applied: you have not read {names} in this run, and an edit written without seeing the file "
               f"is a guess. Nothing was written. Read {it} first; here {'it is' if it == 'it' else 'they are'}. "
               f"Write your search/replace blocks again, with SEARCH lines copied exactly from these lines:\n\n"
               + "\n\n".join(views))
        return ToolResult(obs, False, data={"unread": unread})

    def _tool(self, act: fmt.Action, step: int, cancel: CancelToken) -> ToolResult:
        remaining = max(1.0, self.budgets.max_time_s - self.elapsed())
        a = act.args
        if act.name == "read":
            r = self.tools.read(a["path"], a.get("start"), a.get("end"))
        elif act.name == "list":
            r = self.tools.list(a.get("path", "."))
        elif act.name == "search":
            r = self.tools.search(a["pattern"], a.get("path", "."))
        elif act.name == "run":
            r = self.tools.run(a["command"], timeout=remaining, cancel=cancel)
        elif act.name == "test":
            r = self.tools.test(a.get("args", ""), timeout=remaining, cancel=cancel)
            if r.ok and self.edits:
                r.observation += '\nThe tests pass. If the task is done, call done: {"name": "done", ...}'
        elif act.name == "done" and self._untested and not self._done_refused:
            # small models announce "the tests pass" without running them: once, they must
            self._done_refused = True
            r = ToolResult("Not finished: you edited files after the last test run. Run the tests (test), "
                           "then call done.", False)
        elif act.name == "done":
            self.done_summary = str(a.get("summary", "")).strip()
            r = ToolResult("finished", True)
        elif unread := self._unread(act):  # an edit of a file the model has not seen
            r = self._show_unread(unread, step)
        else:  # edit
            before = dict(self.tools.originals)
            r = self.tools.edit(act, f"agent: {self.task.splitlines()[0][:50]} (step {step})")
            if r.data.get("files"):
                self.edits += 1
                if r.data.get("commit"):
                    self.commits.append(r.data["commit"])
                r.data["originals"] = {p: t for p, t in self.tools.originals.items() if p not in before}
        if act.name == "test":
            self.last_test = {"command": r.data.get("command"), "exit_code": r.data.get("exit_code")}
            self._untested = False
        if act.name == "edit" and r.data.get("files"):
            self._untested = True
        self._seen_after(act, step, r)
        args = {**a, "blocks": len(act.blocks)} if act.name == "edit" else a
        self.emit("tool", step=step, name=act.name, args=args, ok=r.ok,
                  observation=fmt.truncate_middle(r.observation, 4000), output=r.output, **r.data)
        return r

    def _seen_after(self, act: fmt.Action, step: int, r: ToolResult) -> None:
        """What the model has now seen of the repository, and what may have changed."""
        if act.name == "edit":
            files = r.data.get("files") or []
            if files:
                self.known.update(files)
                self.repeats.edited(files)
                self._files = None  # a new file, maybe
            return
        if act.name == "read" and r.ok and r.data.get("path"):
            self.known.add(r.data["path"])
        if act.name == "run":
            for path in cat_paths(act.args["command"]) or []:
                rel = self.tools.relpath(path)
                if rel and r.ok:
                    self.known.add(rel)
        self.repeats.record(act, step, r.data, r.ok)
        if act.name == "run" and not (read_only(act.args["command"]) or
                                      fmt.is_test_command(act.args["command"], self.test_cmd)):
            self._files = None  # a command may have made or removed files

    # ---------------------------------------------------------------- the context

    def _count(self, text: str) -> int:
        return self.client.count_tokens(text) + 4  # the turn's own markers

    def _fit(self) -> tuple[list[dict], int] | None:
        """The messages for the next turn, inside the context with room for the answer: the oldest
        observations shrink to one line first (the latest few stay whole). None if even that fails."""
        if self._base_tokens < 0:
            self._base_tokens = sum(self._count(m["content"]) for m in self._base)
        for m in self.convo:
            if m.tokens < 0:
                m.tokens = self._count(m.content)
                m.short_tokens = self._count(m.short) if m.short is not None else m.tokens
        want = min(self.turn_tokens, 512)  # at least this much room to answer
        limit = self.n_ctx - want - 16

        def total() -> int:
            return self._base_tokens + sum(m.short_tokens if m.condensed else m.tokens for m in self.convo)

        if total() > limit:
            observations = [m for m in self.convo[1:] if m.short is not None and not m.condensed]
            shrinkable = observations[:-OBS_KEEP_FULL] if len(observations) > OBS_KEEP_FULL else []
            n = 0
            # shrink well below the limit at once: every shrink changes the history, and the engine
            # must then prefill from there on, so it should not happen every turn
            for m in shrinkable:
                if total() <= limit * 0.7:
                    break
                m.condensed, n = True, n + 1
            for m in observations[-OBS_KEEP_FULL:]:
                if total() <= limit:
                    break
                m.condensed, n = True, n + 1
            if n:
                self.emit("condense", observations=n, tokens=total())
        used = total()
        if used > limit:
            return None
        messages = self._base + [{"role": m.role, "content": m.text} for m in self.convo]
        return messages, self.n_ctx - used - 16

    # ---------------------------------------------------------------- the end

    def _finish(self, reason: str, summary: str) -> AgentResult:
        diff, files, uncommitted = self._final_diff()
        if reason == "done":
            summary = summary or "(the model gave no summary)"
        wall = self.elapsed()
        result = AgentResult(self.run_id, self.path, reason, summary, diff, files, list(self.commits),
                             self.used.steps, self.used.tokens, wall, self.edits, self.last_test, uncommitted)
        self.emit("end", reason=reason, summary=summary, steps=self.used.steps, tokens=self.used.tokens,
                  prompt_tokens=self.used.prompt_tokens, wall_s=round(wall, 3), edits=self.edits,
                  commits=self.commits, files_changed=files, uncommitted=uncommitted, last_test=self.last_test,
                  diff=fmt.truncate_middle(diff, 100_000), report=result.report())
        return result

    def _final_diff(self) -> tuple[str, list[str], list[str]]:
        """Everything the run changed: `git diff START HEAD` in git (commits, the agent's and any a
        command made), else the workspace's record of each file's text before the run first wrote it."""
        root = self.ws.root
        if self.ws.git and self.ws.commit and not self.tampered and self.start_commit:
            try:
                head = git_head(root)
                diff, files = "", []
                if head and head != self.start_commit:
                    diff = git_output(root, "diff", "--no-ext-diff", "--no-textconv", "--no-color",
                                      self.start_commit, head)
                    files = git_output(root, "diff", "--name-only", "--no-ext-diff", self.start_commit, head).split()
                uncommitted = sorted(git_status(root) - self.start_status)
                return diff, files, uncommitted
            except PairlineError:
                pass  # fall back to the record below
        lines: list[str] = []
        files = []
        for path, before in self.tools.originals.items():
            real = root / path
            try:
                now = real.read_bytes().decode("utf-8", "replace") if real.is_file() else None
            except OSError:
                now = None
            if now == before:
                continue
            files.append(path)
            lines += unified_diff(before or "", now or "", path)
        return "\n".join(lines) + ("\n" if lines else ""), files, []

    # ---------------------------------------------------------------- resume

    @classmethod
    def resume(cls, ref: str, client: Client, *, budgets: dict | None = None, test_cmd: str | None = None,
               repo: str | None = None, **kw) -> Agent:
        """The run recorded in `ref` (a path or a run id), ready to go on from its last complete step.
        `budgets` overrides the recorded ones; the used amounts carry over. Refuses (PairlineError)
        when the run is finished, or the repository moved on in a way that conflicts with it."""
        path = find_run(ref)
        events = load_trajectory(path)
        head = events[0]
        ends = [e for e in events if e.get("type") == "end"]
        if ends and ends[-1].get("reason") == "done":
            raise PairlineError(f"run {head.get('run_id')} is finished (the model called done); start a new run")
        root = Path(head["repo"])
        if repo is not None and Path(repo).resolve() != root and Workspace.open(repo).root != root:
            raise PairlineError(f"run {head.get('run_id')} is on {root}, not {repo}")
        if not root.is_dir():
            raise PairlineError(f"run {head.get('run_id')} is on {root}, which no longer exists")
        ws = Workspace.open(root)
        if ws.root != root or ws.git != bool(head.get("git")):
            raise PairlineError(f"{root} is no longer the repository run {head.get('run_id')} worked on")
        tools = [e for e in events if e.get("type") == "tool"]
        _check_unchanged(ws, head, tools)
        b = Budgets(**{**head["budgets"], **{k: v for k, v in (budgets or {}).items() if v is not None}})
        agent = cls(client, ws, head["task"], budgets=b, test_cmd=test_cmd or head["test_cmd"],
                    n_ctx=kw.pop("n_ctx", head.get("n_ctx", 8192)), turn_tokens=head.get("turn_tokens", 1024),
                    example=head.get("example", True), **kw)
        agent.run_id, agent.path = head["run_id"], path
        agent.start_commit = head.get("start_commit")
        agent.start_status = set(head.get("start_dirty", []))
        agent.convo = [Msg("user", head["first_message"])]
        agent.resumed_from = len(events)
        turns = {e["step"]: e for e in events if e.get("type") == "turn"}
        observations = {e["step"]: e for e in events if e.get("type") == "observation"}
        for step in sorted(turns):
            obs = observations.get(step)
            if obs is None:
                done = [t.get("observation", "") for t in tools if t.get("step") == step]
                if not done:
                    continue  # the run died before this step's action ran: the step is spent, not kept
                left = b.max_steps - step
                obs = {"content": fmt.observation("\n\n".join(done), left),
                       "short": fmt.observation("[output dropped]", left)}
            agent.convo += [Msg("assistant", turns[step]["text"]),
                            Msg("user", obs["content"], short=obs["short"], step=step)]
        agent.used = Used(steps=len(turns), tokens=sum(t.get("tokens", 0) for t in turns.values()),
                          prompt_tokens=sum(t.get("prompt_tokens", 0) for t in turns.values()),
                          time_s=max(e.get("elapsed_s", 0.0) for e in events))
        # what the model has seen: the first message's files, then what it read and wrote (its looks
        # before the crash are not replayed: at worst it reads a file once more)
        agent.known = set(head.get("shown_files", []))
        agent.repeats = Repeats(agent.test_cmd, agent.tools.relpath)
        for name in agent.known:
            agent.repeats.seen_file(name, 0)
        for t in tools:
            if t.get("name") == "read" and t.get("ok") and t.get("path"):
                agent.known.add(t["path"])
            if t.get("name") == "edit" and t.get("files"):
                agent.known.update(t["files"])
                agent.repeats.edited(t["files"])
            if t.get("name") == "edit" and t.get("files"):
                agent.edits += 1
                if t.get("commit"):
                    agent.commits.append(t["commit"])
                for p, text in (t.get("originals") or {}).items():
                    agent.tools.originals.setdefault(p, text)
            if t.get("name") == "test":
                agent.last_test = {"command": t.get("command"), "exit_code": t.get("exit_code")}
        return agent


def _check_unchanged(ws: Workspace, head: dict, tools: list[dict]) -> None:
    """Refuse to resume when the files the run edited are not as it left them, or (in git) its last
    commit is gone from HEAD's history or a later commit touched those files."""
    run_id = head.get("run_id")
    after: dict[str, str] = {}
    for t in tools:
        after.update(t.get("after_sha256") or {})
    if ws.git:
        commits = [t["commit"] for t in tools if t.get("commit")]
        last = commits[-1] if commits else head.get("start_commit")
        now = git_head(ws.root)
        if last and now != last:
            if now is None or not git_is_ancestor(ws.root, last, now):
                raise PairlineError(f"cannot resume run {run_id}: the repository moved on (HEAD is "
                                    f"{(now or 'empty')[:10]}, and the run's last commit {last[:10]} is no longer "
                                    "in its history); start a new run")
            moved = set(git_output(ws.root, "diff", "--name-only", last, now).split())
            clash = sorted(moved & set(after))
            if clash:
                raise PairlineError(f"cannot resume run {run_id}: commits after it changed {', '.join(clash)}, "
                                    "which the run edited; start a new run")
    for path, sha in after.items():
        real = ws.root / path
        now_sha = hashlib.sha256(real.read_bytes()).hexdigest() if real.is_file() else None
        if now_sha != sha:
            raise PairlineError(f"cannot resume run {run_id}: {path} changed since the run edited it; "
                                "start a new run")


def _model_ctx(client: Client, asked: int) -> int:
    """The context to plan for: what was asked, never more than the client's context holds."""
    n = client.n_ctx
    return min(asked, n) if n is not None and n > 0 else asked
