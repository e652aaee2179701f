"""Every wire word of the ECC608 letter dialect, in one place (host session and simulated
firmware): the command letters the host sends and the fixed answers and markers it reads."""

from __future__ import annotations

from typing import Final

CMD_READY: Final = b"r"
CMD_SERIAL: Final = b"s"
CMD_KEY: Final = b"k"
CMD_SIGNER: Final = b"c"
CMD_DEVICE: Final = b"v"
CMD_ROOT: Final = b"b"
CMD_PRINT: Final = b"p"
CMD_PRINT_ROOT: Final = b"o"
CMD_QUIT: Final = b"q"
READY: Final = "Ready."
SERIAL_CHARS: Final = 18  # the 9-byte ATECC608 serial number, in hex
CHUNK_BYTES: Final = 65  # `p` and `o` print PEM text in chunks of this size
BEGIN_PUBLIC_KEY: Final = "-----BEGIN PUBLIC KEY-----"
END_PUBLIC_KEY: Final = "-----END PUBLIC KEY-----"
BEGIN_CERTIFICATE: Final = "-----BEGIN CERTIFICATE-----"
END_CERTIFICATE: Final = "-----END CERTIFICATE-----"
