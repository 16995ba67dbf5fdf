"""A tiny logger: lines go to stderr and into a buffer that becomes the response's `log` field.

The standard `logging` package costs import time in a process that lives for one call, and we need
one thing it lacks: every line passes through the redactor, so secrets never reach stderr or `log`.
"""

from __future__ import annotations

import sys
import time

_lines: list[str] = []
_secrets: set[str] = set()
_verbose = False
_start = time.monotonic()
_MAX_LOG = 64 * 1024
_REDACTED = "<redacted>"


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


def add_secret(value: object) -> None:
    """Register a secret string: it is replaced by <redacted> in every log line and error message."""
    if isinstance(value, str) and len(value) >= 4:
        _secrets.add(value)
        # PEM blocks may be logged line by line; protect each body line too.
        if "\n" in value:
            for line in value.splitlines():
                line = line.strip()
                if len(line) >= 16 and not line.startswith("-----"):
                    _secrets.add(line)


def redact(text: str) -> str:
    if not _secrets:
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def _emit(level: str, message: str) -> None:
    line = f"[boshcpi {time.monotonic() - _start:7.3f}s] {level} {redact(message)}"
    _lines.append(line)
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def info(message: str) -> None:
    _emit("INFO", message)


def warn(message: str) -> None:
    _emit("WARN", message)


def debug(message: str) -> None:
    if _verbose:
        _emit("DEBUG", message)


def condensed() -> str:
    """The lines of this call, for the response's `log` field (tail kept if very long)."""
    text = "\n".join(_lines)
    if len(text) > _MAX_LOG:
        text = "...\n" + text[-_MAX_LOG:]
    return text


def reset() -> None:
    _lines.clear()
    _secrets.clear()
