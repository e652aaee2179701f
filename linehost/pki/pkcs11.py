"""Pkcs11Signer: the PAI key used in place on a PKCS#11 token (HSM), never exported."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import unquote, unquote_to_bytes

import pkcs11
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_ec_public_key

from linehost.errors import IssuerError, PkiError

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

#: Where Debian and Ubuntu install SoftHSM2's module.
SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

#: Seconds between two attempts to reopen a lost token; signing fails at once in between.
REOPEN_INTERVAL: Final = 1.0

#: DER of the namedCurve OID prime256v1 (CKA_EC_PARAMS of a P-256 key).
_P256_EC_PARAMS = bytes.fromhex("06082a8648ce3d030107")
_P256_COORDINATE_BYTES = 32

_PATH_ATTRS = frozenset({"token", "serial", "manufacturer", "model", "object", "id", "type"})

_T = TypeVar("_T")

_log = structlog.get_logger("linehost.pki")


class _PinRefused(PkiError):
    """The token refused the PIN: trying it again only brings the lockout closer."""


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 `pkcs11:` URI that select one private key."""

    token: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    object: str | None = None
    id: bytes | None = None


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse `pkcs11:token=...;object=...;id=%01`; raise PkiError (PINs are refused, not echoed)."""
    if not uri.startswith("pkcs11:"):
        raise PkiError("pkcs11 URI: must start with 'pkcs11:'")
    path, _, query = uri[len("pkcs11:") :].partition("?")
    texts: dict[str, str] = {}
    key_id: bytes | None = None
    for part in (p for p in path.split(";") if p):
        name, eq, raw = part.partition("=")
        if name in ("pin-value", "pin-source"):
            raise PkiError(f"pkcs11 URI: {name} is not allowed; the PIN comes from the config")
        if not eq:
            raise PkiError(f"pkcs11 URI: attribute {name!r} has no value")
        if name not in _PATH_ATTRS:
            raise PkiError(f"pkcs11 URI: unsupported attribute {name!r}")
        if name in texts or (name == "id" and key_id is not None):
            raise PkiError(f"pkcs11 URI: attribute {name!r} given twice")
        if name == "id":
            key_id = unquote_to_bytes(raw)
            continue
        try:
            texts[name] = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise PkiError(f"pkcs11 URI: attribute {name!r} is not UTF-8") from None
    for part in (p for p in query.split("&") if p):
        name = part.partition("=")[0]
        if name in ("pin-value", "pin-source"):
            raise PkiError(f"pkcs11 URI: {name} is not allowed; the PIN comes from the config")
        raise PkiError(f"pkcs11 URI: unsupported query attribute {name!r}")
    kind = texts.pop("type", "private")
    if kind != "private":
        raise PkiError(f"pkcs11 URI: type={kind} is not a private key")
    if "object" not in texts and key_id is None:
        raise PkiError("pkcs11 URI: needs object= or id= to name the key")
    return Pkcs11Uri(
        token=texts.get("token"),
        serial=texts.get("serial"),
        manufacturer=texts.get("manufacturer"),
        model=texts.get("model"),
        object=texts.get("object"),
        id=key_id,
    )


class Pkcs11Signer:
    """Signs with ECDSA-SHA256 by a P-256 private key on a PKCS#11 token, in a worker thread.

    When the token fails (unplugged, reset, its session lost) the signer restarts the module,
    logs in again and retries once; while the token stays away every signature fails at once
    and a new reopen is tried at most every REOPEN_INTERVAL seconds.
    """

    def __init__(
        self,
        session: pkcs11.Session,
        key: SignMixin,
        public_key: ec.EllipticCurvePublicKey,
        description: str,
        *,
        reopen: Callable[[], tuple[pkcs11.Session, SignMixin, ec.EllipticCurvePublicKey]]
        | None = None,
    ) -> None:
        """Take over an open, logged-in session and a key in it; Pkcs11Signer.open is the way in."""
        self._session: pkcs11.Session | None = session
        self._key: SignMixin | None = key
        self._public_key = public_key
        self._description = description
        self._reopen = reopen
        self._closed = False
        self._lost: str | None = None  # why the token is unusable, while it is
        self._next_reopen = 0.0
        # The module is initialised without OS locking: one thread, one call at a time.
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11-signer")

    @classmethod
    def open(cls, uri: str, module_path: str, pin: str) -> Pkcs11Signer:
        """Log in to the token and find the key; raise PkiError naming the problem (blocking)."""
        where = parse_pkcs11_uri(uri)
        try:
            lib = pkcs11.lib(module_path)
        except (PKCS11Error, OSError) as exc:
            raise PkiError(f"PKCS#11 module {module_path}: cannot load ({exc})") from None
        session, key, public_key, label = _log_in(lib, where, pin)
        name = where.object or (where.id.hex() if where.id else "?")

        def reopen() -> tuple[pkcs11.Session, SignMixin, ec.EllipticCurvePublicKey]:
            # Sessions and object handles die with the module; only a restart finds the token
            # again once it is back (SoftHSM2 never re-reads a token directory that vanished).
            with contextlib.suppress(PKCS11Error):
                lib.finalize()
            try:
                lib.initialize()
            except PKCS11Error as exc:
                raise PkiError(
                    f"PKCS#11 module {module_path}: cannot restart ({_name(exc)})"
                ) from None
            return _log_in(lib, where, pin)[:3]

        return cls(
            session, key, public_key, f"PKCS#11 key {name!r} on token {label!r}", reopen=reopen
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half of the token's key."""
        return self._public_key

    async def sign(self, data: bytes) -> bytes:
        """Return a DER ECDSA-SHA256 signature over `data`; raise IssuerError on any HSM failure."""
        digest = hashlib.sha256(data).digest()
        raw = await self._run(lambda key: key.sign(digest, mechanism=Mechanism.ECDSA))
        if len(raw) != 2 * _P256_COORDINATE_BYTES:
            raise IssuerError(f"{self._description}: signature of {len(raw)} bytes, not 64")
        r = int.from_bytes(raw[:_P256_COORDINATE_BYTES], "big")
        s = int.from_bytes(raw[_P256_COORDINATE_BYTES:], "big")
        return encode_dss_signature(r, s)

    async def aclose(self) -> None:
        """Log out and close the session, then stop the worker thread; idempotent."""
        if self._closed:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._worker, self._close)
        finally:
            self._worker.shutdown(wait=False)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session, self._key = self._session, None, None
            # A token that is gone already has nothing left to release.
            if session is not None:
                with contextlib.suppress(PKCS11Error):
                    session.close()

    async def _run(self, call: Callable[[SignMixin], _T]) -> _T:
        def locked() -> _T:
            with self._lock:
                if self._closed:
                    raise IssuerError(f"{self._description}: signer is closed")
                if self._key is None:
                    away = self._try_reopen()
                    if away is not None:
                        raise IssuerError(f"{self._description}: HSM unavailable ({away})")
                failed = ""
                for retry in (False, True):
                    if retry:  # the token failed: reopen it and try once more
                        away = self._try_reopen(force=True)
                        if away is not None:
                            raise IssuerError(f"{self._description}: {failed}; {away}")
                    assert self._key is not None
                    try:
                        return call(self._key)
                    except PKCS11Error as exc:
                        failed = f"HSM failed ({_name(exc)})"
                        self._lose(failed)
                        if retry:
                            raise IssuerError(f"{self._description}: {failed}") from exc
                raise AssertionError("unreachable")

        try:
            future = asyncio.get_running_loop().run_in_executor(self._worker, locked)
        except RuntimeError:  # the worker was shut down by aclose
            raise IssuerError(f"{self._description}: signer is closed") from None
        return await future

    def _lose(self, why: str) -> None:
        # The old handles are not closed: after a module restart their numbers may be reused.
        self._session, self._key = None, None
        if self._lost is None:
            _log.error("hsm_lost", key=self._description, detail=why)
        self._lost = why

    def _try_reopen(self, *, force: bool = False) -> str | None:
        """Log in to the token again and find the key; return why not while it stays away."""
        if self._reopen is None:
            return self._lost or "the signer cannot reopen its token"
        now = time.monotonic()
        if not force and now < self._next_reopen:
            return self._lost or "the token is away"
        self._next_reopen = now + REOPEN_INTERVAL
        try:
            session, key, public_key = self._reopen()
        except _PinRefused as exc:
            self._reopen = None
            self._lost = f"cannot reopen: {exc}; not trying again until the host restarts"
            return self._lost
        except PkiError as exc:
            self._lost = f"cannot reopen: {exc}"
            return self._lost
        if public_key != self._public_key:
            with contextlib.suppress(PKCS11Error):
                session.close()
            self._lost = "cannot reopen: the token now holds another key under that name"
            return self._lost
        self._session, self._key, self._lost = session, key, None
        _log.warning("hsm_reopened", key=self._description)
        return None


def _log_in(
    lib: Pkcs11Lib, where: Pkcs11Uri, pin: str
) -> tuple[pkcs11.Session, SignMixin, ec.EllipticCurvePublicKey, str]:
    token = _find_token(lib, where)
    label = token.label
    try:
        session = token.open(user_pin=pin)
    except pkcs11.exceptions.PinIncorrect:
        raise _PinRefused(f"PKCS#11 token {label!r}: wrong PIN") from None
    except pkcs11.exceptions.PinLocked:
        raise _PinRefused(f"PKCS#11 token {label!r}: PIN locked") from None
    except pkcs11.exceptions.UserAlreadyLoggedIn:
        raise PkiError(
            f"PKCS#11 token {label!r}: already logged in by this process "
            "(use one Pkcs11Signer per token)"
        ) from None
    except PKCS11Error as exc:
        raise PkiError(f"PKCS#11 token {label!r}: cannot log in ({_name(exc)})") from None
    try:
        key, public_key = _find_key(session, where, label)
    except BaseException:
        session.close()
        raise
    return session, key, public_key, label


def _find_token(lib: Pkcs11Lib, where: Pkcs11Uri) -> pkcs11.Token:
    serial = where.serial.encode() if where.serial is not None else None
    try:
        tokens = [
            t
            for t in lib.get_tokens(token_label=where.token, token_serial=serial)
            if (where.manufacturer is None or t.manufacturer_id == where.manufacturer)
            and (where.model is None or t.model == where.model)
        ]
    except PKCS11Error as exc:
        raise PkiError(f"PKCS#11 module {lib.so}: cannot list tokens ({_name(exc)})") from None
    wanted = where.token if where.token is not None else "(any)"
    if not tokens:
        raise PkiError(f"PKCS#11 token {wanted!r}: not found")
    if len(tokens) > 1:
        raise PkiError(f"PKCS#11 token {wanted!r}: {len(tokens)} tokens match; be more specific")
    return tokens[0]


def _find_key(
    session: pkcs11.Session, where: Pkcs11Uri, token: str
) -> tuple[SignMixin, ec.EllipticCurvePublicKey]:
    name = where.object or (where.id.hex() if where.id else "")
    what = f"PKCS#11 key {name!r} on token {token!r}"
    try:
        key = session.get_key(ObjectClass.PRIVATE_KEY, label=where.object, id=where.id)
    except pkcs11.exceptions.NoSuchKey:
        raise PkiError(f"{what}: no such private key") from None
    except pkcs11.exceptions.MultipleObjectsReturned:
        raise PkiError(f"{what}: several private keys match; add id= to the URI") from None
    except PKCS11Error as exc:
        raise PkiError(f"{what}: cannot search ({_name(exc)})") from None
    if key.key_type != KeyType.EC or key[Attribute.EC_PARAMS] != _P256_EC_PARAMS:
        raise PkiError(f"{what}: not an EC P-256 key")
    public_key = _public_key(session, key, what)
    return cast(SignMixin, key), public_key


def _public_key(session: pkcs11.Session, key: pkcs11.Key, what: str) -> ec.EllipticCurvePublicKey:
    label, key_id = key.label, key.id
    for object_class in (ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE):
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class, Attribute.ID: key_id}
        if label:
            attrs[Attribute.LABEL] = label
        found = list(session.get_objects(attrs))
        if len(found) != 1:
            continue
        if object_class == ObjectClass.PUBLIC_KEY:
            loaded = serialization.load_der_public_key(
                encode_ec_public_key(cast(pkcs11.PublicKey, found[0]))
            )
        else:
            loaded = x509.load_der_x509_certificate(found[0][Attribute.VALUE]).public_key()
        if isinstance(loaded, ec.EllipticCurvePublicKey):
            return loaded
    raise PkiError(f"{what}: no public key or certificate object with the same label and id")


def _name(exc: PKCS11Error) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
