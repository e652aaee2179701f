"""Which session speaks to a jig: chosen by `[[jigs]] protocol`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from linehost.errors import ConfigError
from linehost.protocol.host import HostSession
from linehost.protocol.letters import LetterSession
from linehost.protocol.session import JigProtocol, Timing

#: Protocol name (as in the config) -> a new session for a freshly opened port.
PROTOCOLS: Final[dict[str, Callable[[Timing], JigProtocol]]] = {
    "v1": HostSession,
    "ecc608-letters": LetterSession,
}

#: Protocols whose devices show a bare public key (no proof of possession): `[pki]
#: allow_without_pop` must allow them.
WITHOUT_POP: Final = frozenset({"ecc608-letters"})


def new_session(protocol: str, timing: Timing) -> JigProtocol:
    """A fresh session speaking `protocol`; raise ConfigError for an unknown name."""
    try:
        make = PROTOCOLS[protocol]
    except KeyError:
        raise ConfigError(f"unknown jig protocol {protocol!r}") from None
    return make(timing)
