"""Records the driver-neutral commands report: orphans (`cleanup`), checks (`doctor`) and set-up steps
(`init`). Drivers fill them in; `cleanup.py`, `doctor.py` and `hostinit.py` own their output."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OK, WARN, FAIL = "OK", "WARN", "FAIL"


class Orphan:
    """Something the CPI (or the Go CPI it replaces) made that belongs to nothing alive."""

    __slots__ = ("age", "error", "kind", "location", "name", "reason", "removed")

    def __init__(self, kind: str, name: str, age: float | None, reason: str, location: str = "") -> None:
        self.kind, self.name, self.age, self.reason, self.location = kind, name, age, reason, location
        self.removed = False
        self.error = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "age_seconds": None if self.age is None else int(self.age),
            "reason": self.reason,
            "location": self.location,
            "removed": self.removed,
            "error": self.error,
        }


class Check:
    """One doctor row: OK, WARN or FAIL, with a one-line fix when not OK."""

    __slots__ = ("detail", "fix", "name", "status")

    def __init__(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.name, self.status, self.detail, self.fix = name, status, detail, fix

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


class Step:
    """One `init` step: `created`, `updated` or `unchanged`."""

    __slots__ = ("detail", "result", "what")

    def __init__(self, what: str, result: str, detail: str = "") -> None:
        self.what, self.result, self.detail = what, result, detail

    def __str__(self) -> str:
        return f"{self.what:<40} {self.result:<9} {self.detail}".rstrip()


def one_line_error(command: str, e: BaseException, fix: str) -> str:
    """`doctor`/`cleanup`/`init` report a failure as one line with a fix, never a traceback."""
    message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
    first = str(message).strip().splitlines()[0] if str(message).strip() else type(e).__name__
    return f"{command}: {first}" + (f"\n  fix: {fix}" if fix else "")
