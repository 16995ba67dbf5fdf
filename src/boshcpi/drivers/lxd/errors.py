"""The one place where LXD/Incus errors become BOSH error types."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from boshcpi.drivers.lxd.client import LXDError
from boshcpi.protocol import BoshError, CloudError, NoDiskSpace


@contextmanager
def mapped(action: str, not_found: BoshError | None = None) -> Iterator[None]:
    """Turn LXDError into a BOSH error: 404 -> `not_found` (if given), no space -> NoDiskSpace,
    an unreachable daemon -> CloudError with ok_to_retry, anything else -> CloudError."""
    try:
        yield
    except LXDError as e:
        raise to_bosh(e, action, not_found) from None


def to_bosh(e: LXDError, action: str, not_found: BoshError | None = None) -> BoshError:
    if e.not_found and not_found is not None:
        return not_found
    text = e.message
    lowered = text.lower()
    if "no space left" in lowered or "quota exceeded" in lowered:
        return NoDiskSpace(f"{action}: {text}")
    retry = e.unreachable or e.status in (502, 503, 504) or "timeout" in lowered
    return CloudError(f"{action}: {text}", ok_to_retry=retry)
