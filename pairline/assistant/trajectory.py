"""A deep-mode run's trajectory: one JSONL file under `cache_dir()/runs`, one event a line, every
line flushed and synced before the run goes on, so a crash leaves a usable file (its last line, if
cut short, is dropped on reading). docs/agent.md describes the events."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pairline.errors import PairlineError

TRAJECTORY_VERSION = 1


def runs_dir() -> Path:
    from pairline.models.fetch import cache_dir

    return cache_dir() / "runs"


class Trajectory:
    """An append-only JSONL file; every line is flushed and synced before the run goes on."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        except OSError as err:
            raise PairlineError(f"cannot write the trajectory {path}: {err.strerror or err}") from None

    @staticmethod
    def repair(path: Path) -> None:
        """Drop a last line a crash cut short, so that appending starts on a line of its own."""
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def write(self, event: dict) -> None:
        self.f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def find_run(ref: str) -> Path:
    """A trajectory by path, or by run id under the runs folder."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    by_id = runs_dir() / f"{ref.removesuffix('.jsonl')}.jsonl"
    if ref.strip() and "/" not in ref and by_id.is_file():
        return by_id
    raise PairlineError(f"--resume {ref}: no such run (neither a file nor a run id in {runs_dir()})")


def load_trajectory(path: Path) -> list[dict]:
    """The events of a trajectory; a last line cut by a crash is dropped, any other bad line refused."""
    try:
        raw = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PairlineError(f"cannot read the trajectory {path}: {err}") from None
    events = []
    for i, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
            events.append(event)
        except ValueError:
            if i == len(raw):
                break  # the line being written when the run died
            raise PairlineError(f"{path} is not a pairline trajectory (line {i} is not a JSON event)") from None
    if not events or events[0].get("type") != "run":
        raise PairlineError(f"{path} is not a pairline trajectory (it does not start with a run event)")
    return events
