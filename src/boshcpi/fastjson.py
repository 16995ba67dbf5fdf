"""JSON through CPython's C accelerator (`_json`) without importing the `json` package.

`import json` costs ~15 ms of a CPI call on a small VM, nearly all of it `re` and its pattern
compiles; the C scanner and encoder underneath need neither. Behaviour matches `json.loads` and
`json.dumps` for what the CPI reads and writes (checked against the standard library in tests); the
standard library is used whenever the accelerator is missing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - every CPython has it
    _json = None

_WS = " \t\n\r"


def _constant(name: str) -> float:
    return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_constant)
    memo: dict = {}


class JSONError(ValueError):
    """Input is not a single valid JSON document."""


_scanner = _json.make_scanner(_Context()) if _json else None


def loads(data: str | bytes | bytearray) -> Any:
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8").removeprefix("\ufeff")  # utf-8-sig costs an import
        except UnicodeDecodeError as e:
            raise JSONError(f"not UTF-8: {e}") from None
    if _scanner is None:  # pragma: no cover
        import json

        try:
            return json.loads(data)
        except ValueError as e:
            raise JSONError(str(e)) from None
    idx, end = 0, len(data)
    while idx < end and data[idx] in _WS:
        idx += 1
    try:
        value, idx = _scanner(data, idx)
    except StopIteration as e:
        raise JSONError(f"expecting value at {e.value}") from None
    except RecursionError:
        raise JSONError("document nested too deeply") from None
    except (ValueError, SystemError):
        # The C scanner reports syntax errors through json.decoder, which it only finds when that
        # module is already loaded: on this (error) path, let the standard library explain.
        return _stdlib_loads(data)
    while idx < end and data[idx] in _WS:
        idx += 1
    if idx != end:
        raise JSONError(f"extra data at {idx}")
    return value


def _stdlib_loads(data: str) -> Any:
    import json

    try:
        return json.loads(data)
    except ValueError as e:
        raise JSONError(str(e)) from None
    except RecursionError:
        raise JSONError("document nested too deeply") from None


def _default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _encoder(sort_keys: bool, separators: tuple[str, str]):
    return _json.make_encoder(
        {}, _default, _json.encode_basestring_ascii, None, separators[1], separators[0], sort_keys, False, True
    )


def dumps(obj: Any, *, sort_keys: bool = False, separators: tuple[str, str] = (", ", ": ")) -> str:
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(obj, sort_keys=sort_keys, separators=separators)
    # Plain strings and scalars are common results (cids, booleans); the encoder handles them too.
    return "".join(_encoder(sort_keys, separators)(obj, 0))
