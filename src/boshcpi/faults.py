"""Test hooks for the reliability suites, shared by every driver.

BOSHCPI_FAIL_AT=<step> makes a call fail at that step (it then must clean up after itself);
BOSHCPI_PAUSE_AT=<step> makes it stop there after logging "paused at <step>", to be killed.
"""

from __future__ import annotations

import os

from boshcpi import log
from boshcpi.protocol import CloudError


def fail_point(step: str) -> None:
    if os.environ.get("BOSHCPI_FAIL_AT") == step:
        raise CloudError(f"injected failure at {step}")
    if os.environ.get("BOSHCPI_PAUSE_AT") == step:
        import time

        log.info(f"paused at {step}")
        time.sleep(3600)
