"""The one exception type users see: it becomes a one-line message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class SynthctError(Exception):
    """A problem with the user's input or environment, worded for the user.

    `path` names the file or folder at fault (when there is one); the message is
    printed as ``synthct: error: <path>: <problem>`` without a traceback.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem
