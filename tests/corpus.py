"""Builders for a corpus of bad, awkward and normal image files, shared by several test modules.

:func:`write_bad_image_corpus` writes one file per case and returns what
``weaverdata.media.image.decode_image`` must say about each; :func:`make_tar` packs arbitrary
members (including hostile names) into a tar. The photos are scikit-image's bundled sample images
(astronaut, coffee, chelsea), so nothing is downloaded. The single-case builders are public so
tests can assert on exact pixels.
"""

from __future__ import annotations

import io
import pathlib
import struct
import tarfile
import zlib
from typing import Final

import numpy as np
from PIL import Image

__all__ = [
    "ANIMATED_COLOURS",
    "ROTATED_LEFT",
    "ROTATED_RIGHT",
    "ROTATED_SIZE",
    "animated_gif",
    "bomb_png",
    "cmyk_jpeg",
    "gray16_png",
    "image_bytes",
    "la_png",
    "make_tar",
    "palette_transparent_png",
    "photo",
    "rgba_png",
    "rotated_jpeg",
    "write_bad_image_corpus",
]

ROTATED_SIZE: Final = (120, 80)
"""Upright (width, height) of the image in ``rotated.jpg``."""
ROTATED_LEFT: Final = (255, 0, 0)
"""Colour of the left half of the upright ``rotated.jpg``."""
ROTATED_RIGHT: Final = (0, 0, 255)
"""Colour of the right half of the upright ``rotated.jpg``."""
ANIMATED_COLOURS: Final = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
"""Frame colours of ``animated.gif``, in order."""

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION: Final = 0x0112


def photo(name: str) -> np.ndarray:
    """A bundled scikit-image sample photo as an RGB uint8 array: astronaut, coffee or chelsea."""
    import skimage.data

    if name not in ("astronaut", "coffee", "chelsea"):
        raise ValueError(f"unknown sample photo {name!r}")
    array = np.asarray(getattr(skimage.data, name)())
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    return array


def image_bytes(im: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode a PIL image in memory."""
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A structurally valid PNG (correct CRCs) whose IHDR claims ``width x height`` 8-bit gray.

    The IDAT holds only a few compressed rows, so the file is tiny; a decoder that trusts the
    header would try to allocate ``width * height`` bytes before noticing.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # filter byte + zero pixels, four rows
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def cmyk_jpeg(rgb: np.ndarray) -> bytes:
    """A CMYK JPEG (Adobe marker, as PIL writes it) of an RGB photo."""
    return image_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)


def gray16_png(width: int = 256, height: int = 64) -> bytes:
    """A 16-bit grayscale PNG with a horizontal gradient from 0 (left) to 65535 (right)."""
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    im = Image.fromarray(np.tile(row, (height, 1)))
    assert im.mode == "I;16"
    return image_bytes(im, "PNG")


def palette_transparent_png(width: int = 64, height: int = 32) -> bytes:
    """Mode P: left half palette index 0 (red, marked transparent), right half index 1 (green)."""
    indices = np.zeros((height, width), dtype=np.uint8)
    indices[:, width // 2 :] = 1
    im = Image.frombytes("P", (width, height), indices.tobytes())
    im.putpalette([255, 0, 0, 0, 255, 0])
    return image_bytes(im, "PNG", transparency=0)


def la_png(width: int = 64, height: int = 32) -> bytes:
    """Mode LA: black everywhere; alpha 0 on the left half, 255 on the right half."""
    pixels = np.zeros((height, width, 2), dtype=np.uint8)
    pixels[:, width // 2 :, 1] = 255
    im = Image.fromarray(pixels)
    assert im.mode == "LA"
    return image_bytes(im, "PNG")


def rgba_png(rgb: np.ndarray) -> bytes:
    """Mode RGBA: the photo with its top half fully transparent and its bottom half opaque."""
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    alpha[: rgb.shape[0] // 2] = 0
    return image_bytes(Image.fromarray(np.concatenate([rgb, alpha], axis=2)), "PNG")


def rotated_jpeg(orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels need EXIF ``orientation`` 6 or 8 to be upright.

    Upright it is :data:`ROTATED_SIZE` (landscape), left half :data:`ROTATED_LEFT`, right half
    :data:`ROTATED_RIGHT`; it is stored rotated (portrait) so that applying the orientation gives
    that picture back. Ignoring the tag, or turning the wrong way, is visible in size or colours.
    """
    width, height = ROTATED_SIZE
    upright = np.zeros((height, width, 3), dtype=np.uint8)
    upright[:, : width // 2] = ROTATED_LEFT
    upright[:, width // 2 :] = ROTATED_RIGHT
    # Orientation 6 is displayed by rotating 90 degrees clockwise, so store it rotated 90
    # degrees counter-clockwise (and vice versa for 8).
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    stored = Image.fromarray(upright).transpose(undo)
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = orientation
    return image_bytes(stored, "JPEG", quality=95, exif=exif.tobytes())


def animated_gif(size: tuple[int, int] = (32, 32)) -> bytes:
    """A 3-frame GIF, one solid colour per frame (:data:`ANIMATED_COLOURS`)."""
    frames = [Image.new("RGB", size, colour) for colour in ANIMATED_COLOURS]
    return image_bytes(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
    )


def write_bad_image_corpus(folder: pathlib.Path) -> dict[str, str | None]:
    """Write the corpus into ``folder`` (created if needed).

    :returns: ``{relative path: expected ImageRejected.reason, or None if it must be accepted}``.
    """
    astronaut = photo("astronaut")
    coffee = photo("coffee")
    chelsea = photo("chelsea")
    coffee_jpeg = image_bytes(Image.fromarray(coffee), "JPEG", quality=90)
    gray_jpeg = image_bytes(Image.fromarray(astronaut).convert("L"), "JPEG", quality=90)

    cases: dict[str, tuple[bytes, str | None]] = {
        "zero.jpg": (b"", "empty_file"),
        "truncated.jpg": (coffee_jpeg[: int(len(coffee_jpeg) * 0.6)], "decode_error:truncated"),
        "bomb.png": (bomb_png(), "decompression_bomb"),
        "not_image.jpg": (
            b"This is not a JPEG.\nIt is a plain text file that happens to be named .jpg.\n",
            "not_an_image",
        ),
        "cmyk.jpg": (cmyk_jpeg(astronaut), None),
        "gray16.png": (gray16_png(), None),
        "palette_transparent.png": (palette_transparent_png(), None),
        "animated.gif": (animated_gif(), None),
        "rotated.jpg": (rotated_jpeg(6), None),
        "la.png": (la_png(), None),
        "rgba.png": (rgba_png(chelsea), None),
        "gray.jpg": (gray_jpeg, None),
        "photo.jpg": (image_bytes(Image.fromarray(astronaut), "JPEG", quality=90), None),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: reason for name, (_, reason) in cases.items()}


def make_tar(path: pathlib.Path, members: list[tuple[str, bytes]]) -> None:
    """Write a tar holding exactly ``members`` (name, data), in order, names untouched.

    Hostile names such as ``../evil.jpg`` and duplicate names are written as given (TarInfo is
    built by hand, nothing is normalised), so readers' defences can be tested.
    """
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
