"""Device labels: a PNG (QR code + manual code + serial + VID/PID) and the same as ZPL."""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import segno
from PIL import Image, ImageDraw, ImageFont

from linehost.errors import LinehostError
from linehost.onboarding.setup_payload import SetupPayload

MM_PER_INCH: Final = 25.4
_UNSAFE_FILE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]")


class LabelError(LinehostError):
    """A label could not be printed or written."""


@dataclass(frozen=True, slots=True)
class LabelData:
    """What a device label shows."""

    uid: str
    serial_num: str
    vid: str  # 4 hex digits
    pid: str
    qr_code: str  # MT:...
    manual_code: str  # digits only

    @classmethod
    def of(cls, uid: str, serial_num: str, payload: SetupPayload) -> LabelData:
        """The label of a device from its setup payload."""
        return cls(
            uid=uid,
            serial_num=serial_num,
            vid=f"{payload.vid:04X}",
            pid=f"{payload.pid:04X}",
            qr_code=payload.qr_code(),
            manual_code=payload.manual_code(),
        )

    @property
    def manual_code_grouped(self) -> str:
        """The manual code as printed: 4-3-4 digits (and -5-5 for the 21-digit form)."""
        c = self.manual_code
        groups = [c[:4], c[4:7], c[7:11]]
        if len(c) == 21:
            groups += [c[11:16], c[16:21]]
        return "-".join(groups)


@dataclass(frozen=True, slots=True)
class LabelSize:
    """Physical size of the label stock and the printer resolution."""

    width_mm: float = 50.0
    height_mm: float = 30.0
    dpi: int = 203

    def dots(self, mm: float) -> int:
        return round(mm / MM_PER_INCH * self.dpi)


def render_png(label: LabelData, size: LabelSize | None = None) -> bytes:
    """The label as a PNG at the printer's resolution (QR on the left, text on the right)."""
    size = size or LabelSize()
    width, height = size.dots(size.width_mm), size.dots(size.height_mm)
    margin = size.dots(2)
    image = Image.new("L", (width, height), 255)
    qr = segno.make(label.qr_code, error="m", micro=False)
    side = height - 2 * margin
    scale = max(1, side // qr.symbol_size(border=2)[0])
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=scale, border=2)
    buffer.seek(0)
    with Image.open(buffer) as qr_image:
        qr_gray = qr_image.convert("L")
    image.paste(qr_gray, (margin, margin))
    draw = ImageDraw.Draw(image)
    x = margin + qr_gray.width + margin
    room = width - x - margin
    line_height = max(10, (height - 2 * margin) // 5)
    lines = [
        (label.manual_code_grouped, int(line_height * 0.9)),
        (f"SN {label.serial_num}", int(line_height * 0.7)),
        (f"VID {label.vid} PID {label.pid}", int(line_height * 0.7)),
    ]
    y = margin
    for text, start in lines:
        font = _fitting_font(draw, text, room, start)
        draw.text((x, y), text, fill=0, font=font)
        y += line_height + margin // 2
    out = io.BytesIO()
    image.save(out, format="PNG", dpi=(size.dpi, size.dpi))
    return out.getvalue()


def render_zpl(label: LabelData, size: LabelSize | None = None) -> str:
    """The label as a ZPL II program for Zebra printers."""
    size = size or LabelSize()
    width, height = size.dots(size.width_mm), size.dots(size.height_mm)
    margin = size.dots(2)
    # A version-2 QR (25 modules, what an MT: payload needs at level M) plus quiet zone.
    magnification = max(1, min(10, (height - 2 * margin) // 29))
    x_text = margin + 29 * magnification + margin
    font = max(14, (height - 2 * margin) // 6)
    return "\n".join(
        [
            "^XA",
            "^CI28",
            f"^PW{width}",
            f"^LL{height}",
            f"^FO{margin},{margin}^BQN,2,{magnification}^FDMA,{_zpl_text(label.qr_code)}^FS",
            f"^FO{x_text},{margin}^A0N,{font},{font}^FH^FD{_zpl_text(label.manual_code_grouped)}^FS",
            f"^FO{x_text},{margin + font * 2}^A0N,{font * 3 // 4},{font * 3 // 4}"
            f"^FH^FDSN {_zpl_text(label.serial_num)}^FS",
            f"^FO{x_text},{margin + font * 3}^A0N,{font * 3 // 4},{font * 3 // 4}"
            f"^FH^FDVID {label.vid} PID {label.pid}^FS",
            "^XZ",
            "",
        ]
    )


async def send_to_printer(zpl: str, host: str, port: int = 9100, wait: float = 5.0) -> None:
    """Send a ZPL program to a label printer over raw TCP (port 9100)."""
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(zpl.encode("utf-8"))
                await writer.drain()
            finally:
                writer.close()
                await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        detail = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise LabelError(f"label printer {host}:{port}: {detail}") from None


def write_label_files(
    label: LabelData, folder: Path, formats: tuple[str, ...], size: LabelSize | None = None
) -> list[Path]:
    """Write the label as `<serial>.png` / `<serial>.zpl` into `folder`; returns the paths."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stem = _UNSAFE_FILE_CHARS.sub("_", label.serial_num) or label.uid
        written = []
        for fmt in formats:
            path = folder / f"{stem}.{fmt}"
            if fmt == "png":
                path.write_bytes(render_png(label, size))
            else:
                path.write_text(render_zpl(label, size), encoding="utf-8")
            written.append(path)
        return written
    except OSError as exc:
        raise LabelError(f"label folder {folder}: {exc.strerror or exc}") from None


def _fitting_font(
    draw: ImageDraw.ImageDraw, text: str, room: int, size: int
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The default font at the largest size up to `size` that fits `room` dots."""
    while True:
        font = ImageFont.load_default(size=size)
        if size <= 8 or draw.textlength(text, font=font) <= room:
            return font
        size -= 1


def _zpl_text(text: str) -> str:
    """Field data safe for ZPL: `^FH` hex escapes for the command and escape characters."""
    return "".join(f"_{ord(c):02X}" if c in "^~_" or not " " <= c <= "~" else c for c in text)
