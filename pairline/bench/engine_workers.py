"""The child-process harness of `pairline bench engine`: each engine (pairline/bench/peers.py) is
loaded and driven in its own worker process, one call at a time, so its peak RSS is its own and a
crash or a hang stays in that process."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Any

from pairline.bench.peers import current_rss_mb, make_backend, peak_rss_mb
from pairline.errors import PairlineError


def _worker_main(conn, name: str, kwargs: dict, threads: int | None = None, env: dict | None = None) -> None:
    try:
        # OpenMP reads its settings when torch is first imported: apply them before that
        env_applied = "torch" not in sys.modules
        os.environ.update(env or {})
        backend = make_backend(name, kwargs)
        if threads:
            backend.set_threads(threads)
        backend.info["env"] = dict(env or {})
        backend.info["thread_env"] = {
            k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_", "PAIRLINE_"))
        }
        backend.info["env_applied_before_torch"] = env_applied
        conn.send(("ok", backend.info))
        while True:
            method, args = conn.recv()
            if method == "stop":
                conn.send(("ok", {"peak_rss_mb": peak_rss_mb()}))
                return
            if method == "rss":
                conn.send(("ok", {"peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb()}))
                continue
            conn.send(("ok", getattr(backend, method)(**args)))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))


class Worker:
    """One engine in its own process, driven one call at a time."""

    def __init__(self, name: str, kwargs: dict, threads: int | None = None, env: dict | None = None):
        import multiprocessing as mp

        self.name = name
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, name, kwargs, threads, env), daemon=True)
        self.proc.start()
        child.close()
        self.info: dict = self._recv()

    def _recv(self) -> Any:
        while not self.conn.poll(0.5):
            if not self.proc.is_alive():
                raise PairlineError(f"the {self.name} benchmark worker exited (code {self.proc.exitcode})")
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise PairlineError(f"the {self.name} benchmark worker exited (code {self.proc.exitcode})") from None
        if status == "error":
            raise PairlineError(f"the {self.name} benchmark worker failed:\n{payload}")
        return payload

    def call(self, method: str, **kwargs: Any) -> Any:
        self.conn.send((method, kwargs))
        return self._recv()

    def close(self, force: bool = False) -> dict:
        """force: do not wait for a measurement in flight (the run is being abandoned)."""
        result: dict = {}
        if self.proc.is_alive() and not force:
            try:
                self.conn.send(("stop", {}))
                result = self._recv()
            except (PairlineError, OSError, BrokenPipeError):
                pass
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        return result
