"""OpcuaServer: the line as an OPC UA address space (asyncua), Line -> Stations -> Jigs.

Jig variables change when the runners report a change (an observer), never by polling;
the work order is read again when an attempt ends. Security: None only on a loopback endpoint
or when configured; Basic256Sha256 Sign&Encrypt with a generated server certificate otherwise.
Methods (jig Hold/Resume, WorkOrder Open/Close) go to LineControls, which decides and records
every call, refused ones too, in the audit chain with the OPC UA user.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from asyncua import ua
from asyncua.common.node import Node
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from linehost.config import OpcuaSection
from linehost.errors import ConfigError, LinehostError
from linehost.line.controls import Caller, ControlRefused, LineControls, RefusalKind
from linehost.observers import Observer
from linehost.records import JigStatus
from linehost.tasks import cancel_and_wait

NAMESPACE: Final = "urn:linehost"
CERT_FILE: Final = "server-cert.der"
KEY_FILE: Final = "server-key.pem"

_log = structlog.get_logger("linehost.opcua")

JigKey = tuple[str, str]
WorkOrderFacts = Callable[[], Awaitable[dict[str, Any] | None]]
ANONYMOUS: Final = "anonymous"
VIA: Final = "opcua"

_BAD: Final[dict[RefusalKind, int]] = {
    "denied": ua.status_codes.StatusCodes.BadUserAccessDenied,
    "bad_argument": ua.status_codes.StatusCodes.BadInvalidArgument,
    "invalid_state": ua.status_codes.StatusCodes.BadInvalidState,
    "unavailable": ua.status_codes.StatusCodes.BadResourceUnavailable,
}

#: The session of the method call being served (asyncua does not hand it to callbacks).
_CALLER: contextvars.ContextVar[Any] = contextvars.ContextVar("opcua_caller", default=None)


@dataclass
class _JigNodes:
    state: Node
    uid: Node
    attempt_id: Node
    ok: Node
    failed: Node
    last_outcome: Node
    status: JigStatus | None = None
    done: int = 0


class _Users(UserManager):
    """User names and passwords from `[[opcua.users]]` (read once at start)."""

    def __init__(self, passwords: dict[str, bytes]) -> None:
        self._passwords = passwords

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not self._passwords:
            return User(role=UserRole.User, name=ANONYMOUS)
        expected = self._passwords.get(username or "")
        if expected is None or password is None:
            return None
        if not hmac.compare_digest(expected, password.encode()):
            return None
        return User(role=UserRole.User, name=username)


class OpcuaServer(Observer):
    """Serves one line over OPC UA; an observer of its jigs."""

    def __init__(
        self,
        settings: OpcuaSection,
        *,
        line: str,
        jigs: Sequence[JigKey],
        work_order: WorkOrderFacts | None = None,
        controls: LineControls | None = None,
    ) -> None:
        self._settings = settings
        self._line = line
        self._jig_keys = list(jigs)
        self._work_order = work_order
        self._controls = controls
        passwords: dict[str, bytes] = {}
        for user in settings.users:
            secret = user.password_secret.read_text()
            assert secret is not None  # the section requires a source
            passwords[user.name] = secret.encode()
        self._operators = {user.name for user in settings.users if user.role == "operator"}
        self._server = Server(user_manager=_Users(passwords))
        self._jigs: dict[JigKey, _JigNodes] = {}
        self._wo: dict[str, Node] = {}
        self._dirty: set[JigKey] = set()
        self._wake = asyncio.Event()
        self._wo_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- AttemptObserver -------------------------------------------------------------------

    def jig_changed(self, status: JigStatus) -> None:
        """Note the change; the pump writes it to the address space (subscribers see it)."""
        key = (status.station, status.jig)
        nodes = self._jigs.get(key)
        if nodes is None:
            return
        nodes.status = status
        self._dirty.add(key)
        self._wake.set()
        done = status.ok + status.failed
        if done != nodes.done:
            nodes.done = done
            self._wo_wake.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the address space and listen; ConfigError when the endpoint cannot be served."""
        server = self._server
        await server.init()
        server.set_endpoint(self._settings.endpoint)
        server.set_server_name(f"linehost {self._line}")
        await server.set_application_uri(f"{NAMESPACE}:{self._line}")
        await self._secure()
        idx = await server.register_namespace(NAMESPACE)
        await self._build(idx)
        self._remember_callers()
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(
                f"opcua.endpoint: cannot listen on {self._settings.endpoint}: {exc.strerror}"
            ) from None
        self._tasks.append(asyncio.create_task(self._pump(), name="opcua-jigs"))
        self._tasks.append(asyncio.create_task(self._pump_work_order(), name="opcua-workorder"))
        _log.info("opcua_listening", endpoint=self._settings.endpoint,
                  security=self._settings.policy, users=len(self._settings.users))  # fmt: skip

    async def close(self) -> None:
        """Stop the pumps and the server."""
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        await self._server.stop()

    # --- set-up ----------------------------------------------------------------------------

    async def _secure(self) -> None:
        server = self._server
        if self._settings.policy == "none":
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            cert, key = await self._certificate()
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.set_security_IDs(["Username"] if self._settings.users else ["Anonymous"])

    async def _certificate(self) -> tuple[Path, Path]:
        """The server certificate and key, generated on first use."""
        folder = self._settings.certificate_dir
        cert, key = folder / CERT_FILE, folder / KEY_FILE
        if not cert.exists() or not key.exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"opcua.certificate_dir: {folder}: {exc.strerror}") from None
            await setup_self_signed_certificate(
                key,
                cert,
                f"{NAMESPACE}:{self._line}",
                self._settings.host,
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                {"commonName": f"linehost {self._line}", "organizationName": "linehost"},
            )
            key.chmod(0o600)
            _log.info("opcua_certificate_generated", path=str(cert))
        return cert, key

    async def _build(self, idx: int) -> None:
        objects = self._server.nodes.objects
        line = await objects.add_object(idx, "Line")
        await line.add_property(idx, "Name", self._line)
        stations = await line.add_folder(idx, "Stations")
        station_nodes: dict[str, Node] = {}
        for station, jig in self._jig_keys:
            if station not in station_nodes:
                station_nodes[station] = await stations.add_object(idx, station)
            obj = await station_nodes[station].add_object(idx, jig)
            for name, held in (("Hold", True), ("Resume", False)):
                await obj.add_method(idx, name, self._jig_method(station, jig, held), [],
                                     [ua.VariantType.Boolean])  # fmt: skip
            self._jigs[(station, jig)] = _JigNodes(
                state=await obj.add_variable(idx, "State", "offline"),
                uid=await obj.add_variable(idx, "UID", "", ua.VariantType.String),
                attempt_id=await obj.add_variable(idx, "AttemptId", "", ua.VariantType.String),
                ok=await obj.add_variable(idx, "OK", 0, ua.VariantType.UInt64),
                failed=await obj.add_variable(idx, "Failed", 0, ua.VariantType.UInt64),
                last_outcome=await obj.add_variable(idx, "LastOutcome", "", ua.VariantType.String),
            )
        wo = await line.add_object(idx, "WorkOrder")
        self._wo = {
            "work_order": await wo.add_variable(idx, "Id", "", ua.VariantType.String),
            "quantity": await wo.add_variable(idx, "Quantity", 0, ua.VariantType.UInt64),
            "done": await wo.add_variable(idx, "Done", 0, ua.VariantType.UInt64),
            "remaining": await wo.add_variable(idx, "Remaining", 0, ua.VariantType.UInt64),
        }
        await wo.add_method(
            idx,
            "Open",
            self._open,
            [ua.VariantType.String, ua.VariantType.UInt32],
            [ua.VariantType.Boolean],
        )
        await wo.add_method(
            idx, "Close", self._close, [ua.VariantType.String], [ua.VariantType.Boolean]
        )

    def _remember_callers(self) -> None:
        """Wrap each new session's `call` so that method callbacks know the calling user."""
        iserver = self._server.iserver
        create = iserver.create_session

        def create_session(*args: Any, **kwargs: Any) -> Any:
            session = create(*args, **kwargs)
            call = session.call

            async def call_as(params: Any) -> Any:
                token = _CALLER.set(session)
                try:
                    return await call(params)
                finally:
                    _CALLER.reset(token)

            session.call = call_as  # type: ignore[method-assign]
            return session

        setattr(iserver, "create_session", create_session)  # noqa: B010  (this server's only)

    # --- methods ---------------------------------------------------------------------------

    def _caller(self) -> Caller:
        """The calling session's user; operators (or anyone, without users) may control."""
        session = _CALLER.get()
        user = getattr(getattr(session, "user", None), "name", None) or ANONYMOUS
        may = user in self._operators if self._settings.users else True
        return Caller(VIA, user, may_control=may)

    def _jig_method(self, station: str, jig: str, held: bool) -> Callable[..., Awaitable[Any]]:
        async def call(parent: ua.NodeId) -> Any:
            if self._controls is None:
                return _status(ua.status_codes.StatusCodes.BadNotImplemented)
            act = self._controls.hold if held else self._controls.resume
            name, caller = ("Jig.Hold" if held else "Jig.Resume"), self._caller()
            return await self._serve(
                name, caller, act(caller, station, jig), jig=f"{station}/{jig}"
            )

        return call

    async def _open(self, parent: ua.NodeId, wo_id: ua.Variant, quantity: ua.Variant) -> Any:
        if self._controls is None:
            return _status(ua.status_codes.StatusCodes.BadNotImplemented)
        work_order, count = str(wo_id.Value or ""), int(quantity.Value or 0)
        caller = self._caller()
        answer = await self._serve(
            "WorkOrder.Open",
            caller,
            self._controls.open_work_order(caller, work_order, count),
            work_order=work_order,
        )
        if not isinstance(answer, ua.StatusCode):
            await self._write_work_order({"work_order": work_order, "quantity": count})
        return answer

    async def _close(self, parent: ua.NodeId, wo_id: ua.Variant) -> Any:
        if self._controls is None:
            return _status(ua.status_codes.StatusCodes.BadNotImplemented)
        work_order = str(wo_id.Value or "")
        caller = self._caller()
        answer = await self._serve(
            "WorkOrder.Close",
            caller,
            self._controls.close_work_order(caller, work_order),
            work_order=work_order,
        )
        self._wo_wake.set()  # read the work order again
        return answer

    async def _serve(
        self, method: str, caller: Caller, call: Awaitable[bool | None], **facts: str
    ) -> Any:
        """Run a control call: [changed] (True when nothing says otherwise), or a Bad status."""
        log = _log.bind(method=method, opcua_user=caller.user, **facts)
        try:
            changed = await call
        except ControlRefused as exc:
            log.warning("opcua_method_refused", reason=exc.reason)
            return _status(_BAD[exc.kind])
        log.info("opcua_method_called")
        return [ua.Variant(changed is not False, ua.VariantType.Boolean)]

    # --- pumps -----------------------------------------------------------------------------

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys = list(self._dirty)
            self._dirty.clear()
            for key in keys:
                nodes = self._jigs[key]
                status = nodes.status
                if status is None:
                    continue
                await nodes.state.write_value(status.state.value)
                await nodes.uid.write_value(status.uid or "", ua.VariantType.String)
                await nodes.attempt_id.write_value(status.attempt_id or "", ua.VariantType.String)
                await nodes.ok.write_value(status.ok, ua.VariantType.UInt64)
                await nodes.failed.write_value(status.failed, ua.VariantType.UInt64)
                outcome = status.last_outcome.value if status.last_outcome else ""
                await nodes.last_outcome.write_value(outcome, ua.VariantType.String)

    async def _pump_work_order(self) -> None:
        if self._work_order is None:
            return
        while True:
            try:
                found = await self._work_order()
            except LinehostError as exc:
                _log.debug("opcua_work_order_unreadable", detail=str(exc))
                found = None
            if found is not None:
                await self._write_work_order(found)
            await self._wo_wake.wait()
            self._wo_wake.clear()

    async def _write_work_order(self, figures: dict[str, Any]) -> None:
        for key, node in self._wo.items():
            if key in figures and figures[key] is not None:
                value = figures[key]
                kind = ua.VariantType.String if key == "work_order" else ua.VariantType.UInt64
                await node.write_value(str(value) if key == "work_order" else int(value), kind)


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))
