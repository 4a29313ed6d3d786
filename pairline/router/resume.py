"""Mid-stream failover: an answer whose backend dies after its first token is written on by another
backend of the same tier, from the text the client already has.

The continuation is a request any engine with vLLM's two fields can take (pairline's servers do):
the conversation with the streamed text as an open last assistant message
(`continue_final_message: true, add_generation_prompt: false`), or, for a plain completion, the
prompt followed by that text. With greedy decoding the result is the answer the first backend would
have given, as long as the streamed text encodes back to the ids it was written on (the usual case;
the bound is in docs/scaling.md). `stream_options.continuous_usage_stats` tells the router how many
tokens were spent, so the continuation's `max_tokens` is what is left and the usage the client gets
counts the whole answer once."""

from __future__ import annotations

from dataclasses import dataclass, field

from pairline.router.backends import Backend, chunk_text

MAX_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass(slots=True)
class Progress:
    """What of one answer reached the client so far, across the backends that wrote it."""

    text: str = ""
    spent: int = 0  # completion tokens of the legs that ended (a dead backend's part)
    leg_tokens: int = 0  # this leg's: its backend's running count, else its text chunks
    prompt_tokens: int | None = None  # the first leg's (a continuation's prompt holds the answer so far)
    resumed: list[dict] = field(default_factory=list)  # {"from", "to", "after_tokens"} per continuation

    @property
    def tokens(self) -> int:
        return self.spent + self.leg_tokens

    def see(self, obj: dict) -> None:
        text = chunk_text(obj)
        self.text += text
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.leg_tokens = usage["completion_tokens"]
            if self.prompt_tokens is None and isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        elif text:
            self.leg_tokens += 1  # a backend without running counts: at least one token per chunk

    def cut(self, dead: Backend, to: Backend) -> None:
        self.spent, self.leg_tokens = self.tokens, 0
        self.resumed.append({"from": dead.name, "to": to.name, "after_tokens": self.spent})

    def usage(self, usage: dict) -> dict:
        """The final usage chunk's counts for the whole answer, not just its last leg."""
        if not self.resumed:
            return usage
        prompt = self.prompt_tokens if self.prompt_tokens is not None else usage.get("prompt_tokens", 0)
        return {**usage, "prompt_tokens": prompt, "completion_tokens": self.tokens,
                "total_tokens": prompt + self.tokens}


def resumable(body: dict, chat: bool) -> bool:
    """Whether a request's answer can be continued from its text: chat always; a completion unless it
    is an infill (`suffix`) or echoes its prompt."""
    if chat:
        return True
    return body.get("suffix") is None and not body.get("echo") and isinstance(body.get("prompt"), (str, list))


def upstream_options(body: dict, b: Backend) -> dict:
    """The body a resumable backend gets: running token counts on every chunk (stripped again before
    the client sees them, unless it asked for them)."""
    if not b.resume:
        return body
    opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    return {**body, "stream_options": {**opts, "include_usage": True, "continuous_usage_stats": True}}


def continuation(body: dict, chat: bool, progress: Progress) -> dict:
    """The request that writes on from `progress.text`, with the token budget that is left."""
    out = dict(body)
    if chat:
        messages = list(body["messages"])
        if body.get("continue_final_message"):  # the client was continuing an answer itself
            last = messages[-1]
            messages[-1] = {**last, "content": (last.get("content") or "") + progress.text}
        else:
            messages.append({"role": "assistant", "content": progress.text})
        out.update(messages=messages, continue_final_message=True, add_generation_prompt=False)
    else:
        prompt = body["prompt"]
        out["prompt"] = (prompt[0] if isinstance(prompt, list) else prompt) + progress.text
    for name in MAX_FIELDS:
        if isinstance(body.get(name), int):
            out[name] = max(1, body[name] - progress.tokens)
    return out


def for_client(obj: dict, opts: dict, progress: Progress) -> dict | None:
    """A chunk as the client asked for it: running counts only with `continuous_usage_stats`, the
    final usage chunk only with `include_usage` (then for the whole answer), None: not sent."""
    usage = obj.get("usage")
    if usage is None or "usage" not in obj:
        return obj
    final = not obj.get("choices")
    if final:
        return {**obj, "usage": progress.usage(usage)} if opts.get("include_usage") else None
    if opts.get("continuous_usage_stats"):
        prompt = progress.prompt_tokens if progress.prompt_tokens is not None else usage.get("prompt_tokens", 0)
        return {**obj, "usage": {**usage, "prompt_tokens": prompt, "completion_tokens": progress.tokens,
                                 "total_tokens": prompt + progress.tokens}}
    out = dict(obj)
    if opts.get("include_usage"):
        out["usage"] = None  # as OpenAI sends it on every chunk but the last
    else:
        del out["usage"]
    return out
