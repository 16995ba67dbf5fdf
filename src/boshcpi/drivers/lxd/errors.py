"""The one place where LXD/Incus errors become BOSH error types."""

from __future__ import annotations

from boshcpi.drivers.lxd.client import LXDError
from boshcpi.protocol import BoshError, CloudError, NoDiskSpace


class mapped:
    """`with mapped(action, not_found=...)`: LXDError -> a BOSH error. 404 -> `not_found` (if given),
    no space -> NoDiskSpace, an unreachable daemon -> CloudError with ok_to_retry, else CloudError."""

    __slots__ = ("action", "not_found")

    def __init__(self, action: str, not_found: BoshError | None = None) -> None:
        self.action, self.not_found = action, not_found

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, LXDError):
            raise to_bosh(exc, self.action, self.not_found) from None
        return False


# What LXD and Incus answer for an instance or volume on a cluster member that does not answer.
MEMBER_DOWN = (
    "missing event connection with target cluster member",
    "failed to connect to cluster member",
    "unable to connect to cluster member",
    "cluster member is offline",
    "member is offline",
)


def member_down(e: LXDError) -> bool:
    return any(m in e.message.lower() for m in MEMBER_DOWN)


def to_bosh(e: LXDError, action: str, not_found: BoshError | None = None) -> BoshError:
    if e.not_found and not_found is not None:
        return not_found
    text = e.message
    lowered = text.lower()
    if "no space left" in lowered or "quota exceeded" in lowered:
        return NoDiskSpace(f"{action}: {text}")
    # The daemon going away (restart, upgrade) fails the call mid-way; a retry can succeed. So does a
    # call on a cluster member that is down: it answers again once the member is back.
    transient = ("timeout", "shutting down", "connection reset", "broken pipe", "unexpected eof", *MEMBER_DOWN)
    # 412: the object changed between this call's read and its write (another writer won): reading again
    # and retrying succeeds.
    retry = e.unreachable or e.status in (412, 502, 503, 504) or any(t in lowered for t in transient)
    return CloudError(f"{action}: {text}", ok_to_retry=retry)
