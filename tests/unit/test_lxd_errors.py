"""LXD errors become the right BOSH error types, retryable where a retry can succeed."""

from __future__ import annotations


def test_daemon_going_away_is_retryable():
    from boshcpi.drivers.lxd.client import LXDError
    from boshcpi.drivers.lxd.errors import to_bosh

    assert to_bosh(LXDError(400, "LXD is shutting down"), "x").ok_to_retry is True
    assert to_bosh(LXDError(0, "cannot reach unix:///x: refused"), "x").ok_to_retry is True
    assert to_bosh(LXDError(400, "Invalid devices: bad key"), "x").ok_to_retry is False
    assert to_bosh(LXDError(500, "No space left on device"), "x").error_type == "Bosh::Clouds::NoDiskSpace"


def test_a_lost_write_race_and_a_member_down_are_retryable():
    from boshcpi.drivers.lxd.client import LXDError
    from boshcpi.drivers.lxd.errors import to_bosh

    assert to_bosh(LXDError(412, "ETag doesn't match: a vs b"), "x").ok_to_retry is True
    assert to_bosh(LXDError(500, "Missing event connection with target cluster member"), "x").ok_to_retry is True
