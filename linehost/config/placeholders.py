"""The placeholders the config's templates may use: the config checks them at start-up, and the
modules that fill the templates in (steps, the local issuer, onboarding allocation) import them
from here, so that config never has to import the layers above it."""

from __future__ import annotations

from typing import Final

#: The placeholders a pre/post step argument may use (filled in by the runner).
STEP_PLACEHOLDERS: Final = frozenset(
    {"port", "uid", "jig", "station", "serial_num", "probe", "line"}
)
#: The placeholders a `cn_template` may use.
CN_PLACEHOLDERS: Final = frozenset({"uid", "vid", "pid"})
#: The placeholders a `serial_template` may use.
SERIAL_PLACEHOLDERS: Final = frozenset(
    {"line", "station", "jig", "uid", "seq", "vid", "pid", "yyyymmdd", "yyyy", "mm", "dd"}
)
