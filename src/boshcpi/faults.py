"""Fault injection for the reliability tests, and nothing else.

Off unless the test switch `BOSHCPI_TEST_FAULTS=1` is set, so a stray variable on a director can never
make a real call fail. With the switch on:
- `BOSHCPI_FAIL_AT=<step>` makes a call fail at that step (it then must clean up after itself);
- `BOSHCPI_PAUSE_AT=<step>` makes it stop there after logging "paused at <step>", to be killed;
  with `BOSHCPI_PAUSE_FOR=<seconds>` it goes on after that long (a slow step, for a concurrent call).
Every fault point of every driver is a `fail_point(...)` call; none reads these variables itself.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def fail_point(step: str, error: Callable[[], BaseException] | None = None) -> None:
    if os.environ.get("BOSHCPI_TEST_FAULTS") != "1":
        return
    if os.environ.get("BOSHCPI_FAIL_AT") == step:
        if error is not None:
            raise error()
        from boshcpi.protocol import CloudError

        raise CloudError(f"injected failure at {step}")
    if os.environ.get("BOSHCPI_PAUSE_AT") == step:
        import time

        from boshcpi import log

        log.info(f"paused at {step}")
        time.sleep(float(os.environ.get("BOSHCPI_PAUSE_FOR") or 3600))
