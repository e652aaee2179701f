"""Labels: the PNG's QR code decodes to the recorded text; ZPL reaches a raw-TCP printer."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from PIL import Image

from linehost.config import LabelsSection
from linehost.onboarding.labels import (
    LabelData,
    LabelError,
    LabelSize,
    render_png,
    render_zpl,
    send_to_printer,
)
from linehost.onboarding.service import output_label
from linehost.onboarding.setup_payload import SetupPayload, parse_qr_code
from tests.onboarding.zbar import qr_texts

PAYLOAD = SetupPayload(vid=0xFFF1, pid=0x8000, discriminator=3840, passcode=20202021)
LABEL = LabelData.of("00112233AABBCCDD", "line-1-000042", PAYLOAD)


class Printer:
    """A raw-TCP (port 9100 style) listener that keeps every job it receives."""

    def __init__(self) -> None:
        self.jobs: list[bytes] = []
        self.received = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Printer:
        self.server = await asyncio.start_server(self._job, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _job(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.jobs.append(await reader.read())
        writer.close()
        self.received.set()


@pytest.mark.parametrize("size", [LabelSize(), LabelSize(40, 20, 300), LabelSize(60, 40, 600)])
def test_png_qr_code_decodes_to_the_recorded_text(size: LabelSize) -> None:
    png = render_png(LABEL, size)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (size.dots(size.width_mm), size.dots(size.height_mm))
    assert qr_texts(png) == [LABEL.qr_code]
    decoded = parse_qr_code(qr_texts(png)[0])
    assert (decoded.vid, decoded.pid) == (0xFFF1, 0x8000)
    assert (decoded.discriminator, decoded.passcode) == (3840, 20202021)


def test_zpl_carries_qr_manual_code_serial_and_ids() -> None:
    zpl = render_zpl(LABEL)
    assert zpl.startswith("^XA") and zpl.rstrip().endswith("^XZ")  # noqa: PT018
    assert "^BQN,2," in zpl
    assert f"^FDMA,{LABEL.qr_code}^FS" in zpl
    assert "3497-011-2332" in zpl
    assert "SN line-1-000042" in zpl
    assert "VID FFF1 PID 8000" in zpl


def test_zpl_escapes_control_characters_in_the_serial() -> None:
    zpl = render_zpl(LabelData.of("00", "A^B~C_D", PAYLOAD))
    assert "SN A_5EB_7EC_5FD" in zpl


async def test_zpl_reaches_a_tcp_printer() -> None:
    async with Printer() as printer:
        await send_to_printer(render_zpl(LABEL), "127.0.0.1", printer.port, wait=5)
        await asyncio.wait_for(printer.received.wait(), 5)
    assert printer.jobs == [render_zpl(LABEL).encode()]


async def test_unreachable_printer_is_a_label_error() -> None:
    async with Printer() as printer:
        port = printer.port
    with pytest.raises(LabelError, match=f"127.0.0.1:{port}"):
        await send_to_printer("^XA^XZ", "127.0.0.1", port, wait=2)


async def test_output_label_to_printer_and_folder(tmp_path: Path) -> None:
    async with Printer() as printer:
        port = printer.port
        labels = LabelsSection(printer=f"127.0.0.1:{port}", folder=tmp_path / "labels")
        where = await output_label(LABEL, labels)
        await asyncio.wait_for(printer.received.wait(), 5)
    assert where == [
        str(tmp_path / "labels" / "line-1-000042.png"),
        str(tmp_path / "labels" / "line-1-000042.zpl"),
        f"printer 127.0.0.1:{port}",
    ]
    assert qr_texts((tmp_path / "labels" / "line-1-000042.png").read_bytes()) == [LABEL.qr_code]
    assert printer.jobs[0].decode() == (tmp_path / "labels" / "line-1-000042.zpl").read_text()


async def test_output_label_without_destination_is_an_error() -> None:
    with pytest.raises(LabelError, match="no label destination"):
        await output_label(LABEL, LabelsSection())
