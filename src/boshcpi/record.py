"""Frozen records without `dataclasses`.

`import dataclasses` pulls in `inspect` (~10 ms) and each decorated class costs an `exec`; a CPI
call pays that on every run. A Record is a class with `__slots__`, defaults, keyword construction,
equality, `replace` and read-only attributes: what the specs and the config need, nothing more.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Record:
    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            if name in values:
                value = values.pop(name)
            elif name in self._defaults:
                value = self._defaults[name]
                if isinstance(value, (dict, list)):
                    value = type(value)(value)  # no shared mutable defaults
            else:
                raise TypeError(f"{type(self).__name__}: missing field {name!r}")
            object.__setattr__(self, name, value)
        if values:
            raise TypeError(f"{type(self).__name__}: unknown field(s) {', '.join(sorted(values))}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.as_tuple() == other.as_tuple()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(repr(v) for v in self.as_tuple())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def replace(self, **changes: Any) -> Any:
        values = {n: getattr(self, n) for n in self.__slots__}
        values.update(changes)
        return type(self)(**values)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n in self.__slots__:
            v = getattr(self, n)
            out[n] = v.as_dict() if isinstance(v, Record) else v
        return out
