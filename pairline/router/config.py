"""`tiers.toml`: the router's settings, its two tiers and their backends. Parsed with tomllib and
checked key by key, so a mistake becomes one line naming the key (and its line where it can be
found), never a traceback. docs/scaling.md has the reference."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairline.errors import PairlineError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TIERS = ("realtime", "deep")
MODES = ("realtime", "deep", "auto")
KINDS = ("pairline", "openai", "inprocess")


@dataclass(slots=True)
class BackendConfig:
    kind: str  # pairline (WS + HTTP) | openai (HTTP chat/completions only) | inprocess (the router loads it)
    url: str | None = None  # pairline: http://host:port ; openai: the API base, e.g. http://box:8000/v1
    model: str | None = None  # openai: the model name to send; inprocess: the model to load
    name: str | None = None  # shown in headers and metrics (default: TIER-INDEX)
    api_key_env: str | None = None  # the env var holding this backend's key (never the key itself)
    health_path: str = "/health"  # GET on the server's root; "" turns health checks off
    prediction: bool = True  # pass `prediction` through (vLLM and pairline accept it)
    # pass pairline's `grammar` through; false: a request with one is refused by this backend. Unset:
    # true for pairline's own servers, false for `openai` ones (vLLM ignores a field it does not know,
    # so its answer would not be constrained; say `grammar = true` for a pairline server behind `openai`)
    grammar: bool | None = None
    # continue an answer cut mid-stream on this backend (vLLM's `continue_final_message` and
    # `stream_options.continuous_usage_stats`, which pairline serves too). Unset: true for pairline's
    # servers, false for `openai` ones (say `true` for vLLM; llama.cpp's server has neither field)
    resume: bool | None = None
    # the URL is a balancer in front of replicas (a Ray Serve proxy, a Kubernetes service): one
    # replica failing a request says nothing of the others, so only a refused connection and a failed
    # health check count against its circuit
    balanced: bool = False
    ctx: int = 8192  # inprocess: context per session
    runtime: str = "auto"  # inprocess: auto | torch | llamacpp
    max_sessions: int = 8  # inprocess: resident KV caches
    api_key: str | None = field(default=None, repr=False)  # resolved from api_key_env at load


@dataclass(slots=True)
class TierConfig:
    name: str
    backends: list[BackendConfig]
    max_outstanding: int = 64  # admitted requests in flight; past it 429 / rate_limit_exceeded


@dataclass(slots=True)
class ClassifyConfig:
    deep_context_chars: int = 16000  # a conversation this long goes deep (about 4k tokens)
    deep_files: int = 3  # this many files mentioned or attached go deep


@dataclass(slots=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 8780
    default_mode: str = "auto"
    api_key_env: str | None = None  # clients must send this key (Authorization: Bearer) when set
    # besides loopback names and IP addresses: Host names a remote bind answers to, and web origins
    # whose pages may use the router ("*": any); docs/server.md, "Threat model"
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    failover: bool = True  # a whole tier down: serve from the other one, marked
    retries: int = 2  # further attempts before the first token, on other backends
    retry_backoff_s: float = 0.05  # doubled on each further attempt
    breaker_failures: int = 3  # consecutive failures that open a backend's circuit
    breaker_cooldown_s: float = 10.0  # open this long, then one probe (half-open)
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 300.0  # a CPU deep tier may prefill for minutes
    idle_timeout_s: float = 300.0  # longest silence between two streamed events
    # a client WebSocket session with no client event for this long, while no response runs, is
    # closed (session_expired), as `pairline serve --idle-timeout` does; the server's default
    session_idle_timeout_s: float = 600.0
    affinity_vnodes: int = 64  # virtual nodes per backend on the consistent-hash ring
    affinity_slack: int = 4  # leave a session's backend once it has this many more in flight than the idlest
    ewma_alpha: float = 0.3  # weight of the newest TTFT sample
    max_message_bytes: int = 1 << 20
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    tiers: dict[str, TierConfig] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    source: str = "<config>"


# ---------------------------------------------------------------- loading

class _Checker:
    """Walks the parsed TOML with the text at hand, so errors can name a line."""

    def __init__(self, text: str, source: str):
        self.text, self.source = text, source

    def fail(self, path: list, message: str):
        where = ".".join(p if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
        line = _line_of(self.text, path) if path else None
        loc = f"{self.source}:{line}" if line else self.source
        raise PairlineError(f"{loc}: {where + ': ' if where else ''}{message}")

    def table(self, obj: Any, path: list, cls, skip: tuple[str, ...] = ()) -> dict:
        """Check `obj`'s keys and value types against `cls`'s fields; returns the accepted values."""
        if not isinstance(obj, dict):
            self.fail(path, f"must be a table, got {_tname(obj)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _INTERNAL.get(cls.__name__, ())}
        out = {}
        for key, value in obj.items():
            if key in skip:
                continue
            if key not in fields:
                known = ", ".join(fields)
                self.fail(path + [key], f"unknown key (known: {known})")
            out[key] = self.value(value, path + [key], fields[key].type)
        return out

    def value(self, v: Any, path: list, type_: str) -> Any:
        base = type_.replace(" | None", "")
        ok = {"str": isinstance(v, str), "int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool), "bool": isinstance(v, bool),
              "list[str]": isinstance(v, list) and all(isinstance(x, str) for x in v)}.get(base)
        if ok is False:
            self.fail(path, f"must be {'a' if base != 'int' else 'an'} {_TYPE_WORDS[base]}, got {_tname(v)}")
        return float(v) if base == "float" else v


_INTERNAL = {"RouterConfig": ("classify", "tiers", "api_key", "source"), "TierConfig": ("name", "backends"),
             "BackendConfig": ("api_key",)}
_TYPE_WORDS = {"str": "string", "int": "integer", "float": "number", "bool": "boolean (true/false)",
               "list[str]": "list of strings"}


def _tname(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__) + (f" ({v!r})" if isinstance(v, (str, int, float)) else "")


def _line_of(text: str, path: list) -> int | None:
    """Best effort: the line where `path` (keys and array indexes) is written. Each key is looked for
    from the previous one on, as a `key =` or inside a `[table]` header; index n is the n-th inline
    table `{` or `[[array]]` header after its array's key."""
    code = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), text)  # comments out of the way
    pos, found, prev = 0, False, ""
    for part in path:
        if isinstance(part, int):
            pat = re.compile(r"\{|^[ \t]*\[\[[^\]\n]*\b" + re.escape(prev) + r"\b[^\]\n]*\]\]", re.M)
            hits = list(pat.finditer(code, pos))
            if len(hits) <= part:
                break
            pos = hits[part].start()
        else:
            pat = re.compile(rf"^[ \t]*\[\[?[^\]\n]*\b{re.escape(part)}\b[^\]\n]*\]\]?|\b{re.escape(part)}\s*=", re.M)
            m = pat.search(code, pos)
            if m is None:
                break
            pos, prev = m.start(), part
        found = True
    return code.count("\n", 0, pos) + 1 if found else None


def load_config(path: str | Path, env: dict | None = None) -> RouterConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise PairlineError(f"cannot read the router config {p}: {err.strerror or err}") from None
    return parse_config(text, str(p), env)


def parse_config(text: str, source: str = "<config>", env: dict | None = None) -> RouterConfig:
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PairlineError(f"{source}: not valid TOML: {err}") from None
    ck = _Checker(text, source)
    for key in data:
        if key not in ("router", "tiers", "classify"):
            ck.fail([key], "unknown table (known: router, tiers, classify)")
    cfg = RouterConfig(source=source, **ck.table(data.get("router", {}), ["router"], RouterConfig))
    cfg.classify = ClassifyConfig(**ck.table(data.get("classify", {}), ["classify"], ClassifyConfig))
    _check_router(ck, cfg)

    tiers = data.get("tiers")
    if not isinstance(tiers, dict) or not tiers:
        ck.fail([], "needs [tiers.realtime] and [tiers.deep], each with a `backends` array")
    for name in tiers:
        if name not in TIERS:
            ck.fail(["tiers", name], "unknown tier (the tiers are realtime and deep)")
    names: set[str] = set()
    for name in TIERS:
        if name not in tiers:
            ck.fail(["tiers"], f"missing [tiers.{name}] (both tiers are needed; they may list the same server)")
        cfg.tiers[name] = _tier(ck, tiers[name], name, env, names)
    if cfg.api_key_env:
        cfg.api_key = _env_key(ck, ["router", "api_key_env"], cfg.api_key_env, env)
    return cfg


def _check_router(ck: _Checker, cfg: RouterConfig) -> None:
    if cfg.default_mode not in MODES:
        ck.fail(["router", "default_mode"], f"must be one of {', '.join(MODES)}, got {cfg.default_mode!r}")
    if not 0 < cfg.port < 65536:
        ck.fail(["router", "port"], f"must be a port number (1-65535), got {cfg.port}")
    positive = ("breaker_cooldown_s", "health_interval_s", "health_timeout_s", "connect_timeout_s",
                "first_token_timeout_s", "idle_timeout_s", "session_idle_timeout_s", "breaker_failures",
                "affinity_vnodes", "max_message_bytes")
    for key in positive:
        if not getattr(cfg, key) > 0:  # written so that TOML's nan fails too
            ck.fail(["router", key], f"must be greater than 0, got {getattr(cfg, key)}")
    for key in ("retries", "retry_backoff_s", "affinity_slack"):
        if not getattr(cfg, key) >= 0:
            ck.fail(["router", key], f"must be 0 or more, got {getattr(cfg, key)}")
    if not 0 < cfg.ewma_alpha <= 1:
        ck.fail(["router", "ewma_alpha"], f"must be in (0, 1], got {cfg.ewma_alpha}")
    for key in ("deep_context_chars", "deep_files"):
        if getattr(cfg.classify, key) < 1:
            ck.fail(["classify", key], "must be at least 1")


def _tier(ck: _Checker, obj: Any, name: str, env: dict, names: set[str]) -> TierConfig:
    path = ["tiers", name]
    vals = ck.table(obj, path, TierConfig, skip=("backends",))
    if vals.get("max_outstanding", 1) < 1:
        ck.fail(path + ["max_outstanding"], "must be at least 1")
    raw = obj.get("backends")
    if not isinstance(raw, list) or not raw:
        ck.fail(path + (["backends"] if "backends" in obj else []), "needs a non-empty `backends` array of tables")
    backends = []
    for i, b in enumerate(raw):
        bp = path + ["backends", i]
        bc = BackendConfig(**ck.table(b, bp, BackendConfig))
        if bc.grammar is None:
            bc.grammar = bc.kind != "openai"
        if bc.resume is None:
            bc.resume = bc.kind != "openai"
        if bc.kind not in KINDS:
            ck.fail(bp + ["kind"], f"must be one of {', '.join(KINDS)}, got {bc.kind!r}")
        if bc.kind in ("pairline", "openai"):
            if not bc.url:
                ck.fail(bp + (["kind"] if "kind" in b else []), f"a {bc.kind} backend needs `url`")
            if not re.match(r"^https?://[^/\s]+", bc.url):
                ck.fail(bp + ["url"], f"must be an http:// or https:// URL, got {bc.url!r}")
            bc.url = bc.url.rstrip("/")
        else:
            if not bc.model:
                ck.fail(bp + (["kind"] if "kind" in b else []), "an inprocess backend needs `model` (name or path)")
            if bc.url:
                ck.fail(bp + ["url"], "an inprocess backend has no url (the router serves it on a loopback port)")
            if bc.runtime not in ("auto", "torch", "llamacpp"):
                ck.fail(bp + ["runtime"], f"must be auto, torch or llamacpp, got {bc.runtime!r}")
            if bc.ctx < 64 or bc.max_sessions < 1:
                ck.fail(bp + ["ctx" if bc.ctx < 64 else "max_sessions"], "ctx must be at least 64, max_sessions 1")
        if bc.health_path and not bc.health_path.startswith("/"):
            ck.fail(bp + ["health_path"], f"must start with '/' (or be \"\" for no checks), got {bc.health_path!r}")
        bc.name = bc.name or f"{name}-{i}"
        if bc.name in names:
            ck.fail(bp + (["name"] if "name" in b else []), f"backend name {bc.name!r} is used twice")
        names.add(bc.name)
        if bc.api_key_env:
            bc.api_key = _env_key(ck, bp + ["api_key_env"], bc.api_key_env, env)
        backends.append(bc)
    return TierConfig(name=name, backends=backends, **vals)


def _env_key(ck: _Checker, path: list, var: str, env: dict) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
        ck.fail(path, f"must name an environment variable (the key itself never goes in the file), got {var!r}")
    value = env.get(var)
    if not value:
        ck.fail(path, f"the environment variable {var} is not set")
    return value
