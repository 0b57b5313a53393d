"""Which of Gradio's temporary files belong to which session, so a session's uploads and outputs are deleted when
it ends instead of 30 minutes later (no Gradio import: app/server.py feeds it every request's payload and calls
`end` from Gradio's unload event).

Gradio's cache is content-addressed (the folder of a file is the hash of its bytes), so two sessions that upload the
same photo or draw the same sample share one file: a file is deleted only when no live session refers to it any
more, and never when it is protected (an example) or lies outside the cache folder.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path


def paths_in(payload) -> Iterator[str]:
    """Every "path" string in a request's or response's payload (file descriptions nest in lists and dicts)."""
    if isinstance(payload, dict):
        if isinstance(payload.get("path"), str):
            yield payload["path"]
        for value in payload.values():
            yield from paths_in(value)
    elif isinstance(payload, (list, tuple)):
        for value in payload:
            yield from paths_in(value)


class SessionFiles:
    """Files in `folder` sent or received by each live session."""

    def __init__(self, folder: str | Path, protected: Callable[[], set[str]] = set) -> None:
        self.folder = Path(folder).resolve()
        self.protected = protected  # resolved paths never deleted here (Gradio's keep_in_cache: the examples)
        self.sessions: dict[str, set[Path]] = {}
        self.lock = threading.Lock()

    def _own(self, path: str) -> Path | None:
        resolved = Path(path).resolve()
        return resolved if resolved.is_relative_to(self.folder) and resolved != self.folder else None

    def record(self, session: str | None, payload) -> None:
        """Note the cache files a session's request or response names (other paths are ignored)."""
        if not session:
            return
        owned = {p for p in map(self._own, paths_in(payload)) if p is not None}
        if owned:
            with self.lock:
                self.sessions.setdefault(session, set()).update(owned)

    def end(self, session: str | None) -> list[Path]:
        """Delete the ended session's files that no live session still refers to, and their emptied folders.
        Returns what was deleted."""
        with self.lock:
            mine = self.sessions.pop(session, set()) if session else set()
            held = set().union(*self.sessions.values()) if self.sessions else set()
            keep = held | {Path(p).resolve() for p in self.protected()}
            removed = []
            for path in sorted(mine - keep):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                removed.append(path)
                parent = path.parent
                if parent != self.folder:
                    try:
                        parent.rmdir()  # only if empty: another file (or another request's write) keeps it
                    except OSError:
                        pass
            return removed
