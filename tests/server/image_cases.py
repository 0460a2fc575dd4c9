"""Encoded images in every mode Pillow can write, in every format that takes them.

Each case is real bytes made by Pillow's own encoders (or, for variants Pillow cannot
write - 16-bit-per-channel PNG, 4- and 16-bit BMP, PSD - by a few lines of struct
packing here), so the decoder under test sees what a client could send.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: Width and height of every generated image: small, not square, not the models' size.
SIZE = (24, 18)

#: Modes made from random bytes of the right length; P and PA get a random palette.
BYTE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
#: High-bit-depth modes, filled across their nominal range.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
MODES = BYTE_MODES + DEEP_MODES

#: Formats the server decodes; every mode is tried in each (Pillow refuses the pairs it cannot write).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

#: Formats Pillow can write and open but the server refuses.
REFUSED_FORMATS = ("EPS", "PCX", "TGA", "DDS", "SGI", "QOI", "ICO", "JPEG2000")


@dataclass(frozen=True)
class Case:
    """One encoded image: ``name`` is ``MODE-FORMAT`` or a description of the variant."""

    name: str
    data: bytes


def image_in_mode(mode: str, seed: int = 0, size: tuple[int, int] = SIZE) -> Image.Image:
    """A random image in ``mode`` covering the mode's value range (alpha included)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32), "F")
    if mode == "1":
        return image_in_mode("L", seed, size).convert("1")
    bytes_per_pixel = 2 if mode.startswith("I;16") else len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, width * height * bytes_per_pixel, dtype=np.uint8).tobytes()
    image = Image.frombytes(mode, size, pixels)
    if mode in ("P", "PA"):
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` saved by Pillow in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mode_format_cases() -> Iterator[Case]:
    """Every (mode, format) pair Pillow can write, as ``MODE-FORMAT``."""
    for mode in MODES:
        for fmt in FORMATS:
            try:
                data = encode(image_in_mode(mode), fmt)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # Pillow cannot write this mode in this format
            yield Case(f"{mode}-{fmt}", data)


def _frames(mode: str, sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [image_in_mode(mode, seed, size) for seed, size in enumerate(sizes)]


def _several_frames(fmt: str, mode: str, sizes: list[tuple[int, int]], **options: object) -> bytes:
    first, *rest = _frames(mode, sizes)
    return encode(first, fmt, save_all=True, append_images=rest, **options)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_16_bit(color_type: int, channels: int) -> bytes:
    """A 16-bit-per-sample PNG (Pillow writes only 16-bit grayscale)."""
    width, height = SIZE
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 65536, (height, width * channels), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def bmp(bits: int) -> bytes:
    """An uncompressed BMP with 4 or 16 bits per pixel (Pillow writes only 1, 8, 24, 32)."""
    width, height = SIZE
    rng = np.random.default_rng(4)
    palette = b""
    if bits == 4:
        palette = rng.integers(0, 256, 16 * 4, dtype=np.uint8).tobytes()
        row_bytes = (width + 1) // 2
    else:
        row_bytes = width * 2
    stride = (row_bytes + 3) & ~3
    pixels = rng.integers(0, 256, (height, stride), dtype=np.uint8).tobytes()
    offset = 14 + 40 + len(palette)
    colours = 16 if bits == 4 else 0
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, len(pixels), 2835, 2835, colours, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def psd() -> bytes:
    """A minimal 8-bit RGB Photoshop file, raw pixel data (Pillow reads PSD but cannot write it)."""
    width, height = SIZE
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">I", 0) * 3  # colour mode data, image resources, layers: all empty
    pixels = bytes(range(256)) * (3 * width * height // 256 + 1)
    return header + sections + struct.pack(">H", 0) + pixels[: 3 * width * height]


def tiff_with_corrupt_later_frame() -> bytes:
    """Two-page TIFF whose second page's pixels lie past the end of the file."""
    data = bytearray(
        encode(image_in_mode("RGB", 0), "TIFF", save_all=True, append_images=[image_in_mode("RGB", 1)])
    )
    (first,) = struct.unpack("<I", data[4:8])
    second = _next_ifd(data, first)
    (count,) = struct.unpack("<H", data[second : second + 2])
    for entry in range(second + 2, second + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2]) == (273,):  # StripOffsets of page 2
            data[entry + 8 : entry + 12] = struct.pack("<I", len(data) + 1_000_000)
    return bytes(data)


def _next_ifd(data: bytes | bytearray, ifd: int) -> int:
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    (offset,) = struct.unpack("<I", data[ifd + 2 + 12 * count : ifd + 6 + 12 * count])
    return int(offset)


def tiff_associated_alpha() -> bytes:
    """Grayscale TIFF with premultiplied (associated) alpha, which Pillow opens as mode ``La``."""
    data = bytearray(encode(image_in_mode("LA"), "TIFF"))
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2]) == (338,):  # ExtraSamples: 2 -> 1, associated
            data[entry + 8 : entry + 10] = struct.pack("<H", 1)
    return bytes(data)


def tiff_with_float_strip_offsets() -> bytes:
    """An RGB TIFF whose StripOffsets tag claims type FLOAT: Pillow then seeks to a float."""
    data = bytearray(encode(image_in_mode("RGB"), "TIFF"))
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", data[entry : entry + 2]) == (273,):  # StripOffsets: LONG -> FLOAT
            data[entry + 2 : entry + 4] = struct.pack("<H", 11)
    return bytes(data)


def _float_tiff(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


def special_cases() -> Iterator[Case]:
    """Variants the (mode, format) grid misses: transparency, bit depths, frames, out-of-range values."""
    width, height = SIZE
    rgba = image_in_mode("RGBA")
    palette = rgba.convert("RGB").quantize(16)
    makers: dict[str, Callable[[], bytes]] = {
        "La-TIFF-associated-alpha": tiff_associated_alpha,
        "P-transparency-index-PNG": lambda: encode(palette, "PNG", transparency=3),
        "P-transparency-alpha-table-PNG": lambda: encode(rgba.quantize(16), "PNG"),
        "P-transparency-GIF": lambda: encode(palette, "GIF", transparency=3),
        "L-transparency-key-PNG": lambda: encode(image_in_mode("L"), "PNG", transparency=7),
        "RGB-transparency-key-PNG": lambda: encode(image_in_mode("RGB"), "PNG", transparency=(1, 2, 3)),
        "RGBA-lossless-WEBP": lambda: encode(rgba, "WEBP", lossless=True),
        "P-4-bit-PNG": lambda: encode(palette, "PNG", bits=4),
        "RGB-16-bit-PNG": lambda: png_16_bit(2, 3),
        "RGBA-16-bit-PNG": lambda: png_16_bit(6, 4),
        "LA-16-bit-PNG": lambda: png_16_bit(4, 2),
        "4-bit-BMP": lambda: bmp(4),
        "16-bit-BMP": lambda: bmp(16),
        "CMYK-JPEG-progressive": lambda: encode(image_in_mode("CMYK"), "JPEG", progressive=True),
        "RGB-JPEG-4:4:4": lambda: encode(image_in_mode("RGB"), "JPEG", subsampling=0),
        "several-frames-GIF": lambda: _several_frames("GIF", "P", [SIZE, SIZE, (10, 8)]),
        "several-frames-RGBA-GIF": lambda: _several_frames("GIF", "RGBA", [SIZE, SIZE]),
        "several-frames-WEBP": lambda: _several_frames("WEBP", "RGBA", [SIZE, SIZE]),
        "several-frames-APNG": lambda: _several_frames("PNG", "RGBA", [SIZE, SIZE, SIZE]),
        "several-frames-TIFF": lambda: _several_frames("TIFF", "RGB", [SIZE, (30, 10)]),
        "several-frames-TIFF-mixed-modes": lambda: encode(
            image_in_mode("F"), "TIFF", save_all=True, append_images=[image_in_mode("CMYK")]
        ),
        "huge-later-frame-TIFF": lambda: encode(
            image_in_mode("L"),
            "TIFF",
            save_all=True,
            append_images=[Image.new("L", (5000, 5000))],
            compression="tiff_lzw",
        ),
        "huge-later-frame-GIF": gif_with_huge_later_frame,
        "corrupt-later-frame-TIFF": tiff_with_corrupt_later_frame,
        "F-0-255-TIFF": lambda: _float_tiff(np.random.default_rng(5).random((height, width)) * 255),
        "F-negative-TIFF": lambda: _float_tiff(np.random.default_rng(5).random((height, width)) - 0.5),
        "F-nan-TIFF": lambda: _float_tiff(np.where(np.eye(height, width) > 0, np.nan, 0.5)),
        "F-inf-TIFF": lambda: _float_tiff(np.where(np.eye(height, width) > 0, np.inf, 0.5)),
        "F-constant-TIFF": lambda: _float_tiff(np.full((height, width), 0.25)),
        "I-32-bit-range-TIFF": lambda: encode(
            Image.fromarray(
                np.random.default_rng(6).integers(-(2**31), 2**31 - 1, (height, width), dtype=np.int32)
            ),
            "TIFF",
        ),
        "I-negative-TIFF": lambda: encode(
            Image.fromarray(np.full((height, width), -5, dtype=np.int32)), "TIFF"
        ),
        "I;16-PGM": lambda: encode(image_in_mode("I;16"), "PPM"),
        "F-PFM": lambda: encode(image_in_mode("F"), "PPM"),
        "1-PBM": lambda: encode(image_in_mode("1"), "PPM"),
    }
    for name, make in makers.items():
        yield Case(name, make())


def gif_with_huge_later_frame() -> bytes:
    """Two-frame GIF whose second frame claims 4000x4000 pixels (and holds garbage for them)."""
    data = bytearray(_several_frames("GIF", "P", [SIZE, SIZE]))
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    frames = 0
    while data[position] != 0x3B:  # trailer
        if data[position] == 0x21:  # extension: label, then sub-blocks
            position = _skip_sub_blocks(data, position + 2)
            continue
        frames += 1
        if frames == 2:
            data[position + 5 : position + 9] = struct.pack("<HH", 4000, 4000)
        flags = data[position + 9]
        position += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        position = _skip_sub_blocks(data, position + 1)  # after the LZW minimum code size
    return bytes(data)


def _skip_sub_blocks(data: bytearray, position: int) -> int:
    while data[position]:
        position += data[position] + 1
    return position + 1


def refused_cases() -> Iterator[Case]:
    """Files Pillow can open in formats the server does not decode, named by Pillow's format id."""
    image = image_in_mode("RGB")
    for fmt in REFUSED_FORMATS:
        try:
            yield Case(fmt, encode(image, fmt))
        except (OSError, KeyError):
            continue  # this Pillow build cannot write it
    yield Case("PSD", psd())
