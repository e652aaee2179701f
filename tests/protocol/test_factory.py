"""The jig-protocol factory: `[[jigs]] protocol` picks the session a runner drives."""

from __future__ import annotations

import pytest

from linehost.errors import ConfigError
from linehost.protocol.factory import new_session
from linehost.protocol.host import HostSession
from linehost.protocol.session import JigProtocol, Timing


def test_v1_is_the_host_session() -> None:
    session: JigProtocol = new_session("v1", Timing(sync_interval=2.0))
    assert isinstance(session, HostSession)
    session.open(10.0)
    assert session.next_wakeup() == 12.0


def test_an_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown jig protocol 'x25'"):
        new_session("x25", Timing())
