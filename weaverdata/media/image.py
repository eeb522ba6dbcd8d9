"""Safe image decoding: untrusted bytes in, an upright RGB image (or a typed rejection) out.

Everything here is a pure function over bytes and PIL images: no Ray, no files, no global state
changes. :func:`decode_image` is the single entry point for untrusted data; it either returns a
:class:`DecodedImage` or raises :class:`ImageRejected` with a machine-readable ``reason``:

==================================  =========================================================
reason                              when
==================================  =========================================================
``empty_file``                      zero bytes
``not_an_image``                    no supported format recognises the bytes (e.g. text)
``decompression_bomb``              the header claims more than ``max_pixels`` pixels
                                    (checked before any pixel is decoded), or PIL's own
                                    bomb guard fired
``decode_error:truncated``          the data ends before the image does (never padded and
                                    accepted: ``LOAD_TRUNCATED_IMAGES`` is not used)
``decode_error:bad_header``         the bytes carry a known image signature but the header
                                    is unreadable
``decode_error:zero_size``          the header claims a zero width or height
``decode_error:unsupported_mode``   the pixel mode has no defined RGB conversion
``decode_error:<error_class>``      any other corrupt data, named after the exception class
                                    in snake case: ``decode_error:os_error``,
                                    ``decode_error:syntax_error``, ``decode_error:struct_error``
==================================  =========================================================

Only the raster formats in :data:`SUPPORTED_FORMATS` are tried. Other PIL plugins (EPS, which
shells out to Ghostscript, ICO, PSD, FITS, ...) are deliberately not offered untrusted data; such
files are ``not_an_image``.

The decoded image is never re-encoded here: callers store the original bytes (under
:attr:`DecodedImage.ext`) and use :attr:`DecodedImage.rgb` for filtering, hashing and
thumbnails. ICC profiles are not applied; pixel values are taken as sRGB.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageRejected",
    "decode_image",
    "encode",
    "hamming",
    "phash",
    "resize_max_side",
    "to_rgb",
]

DEFAULT_MAX_PIXELS: Final = 100_000_000
"""Default pixel budget (width * height) of :func:`decode_image`: 100 MP, 300 MB as RGB."""

SUPPORTED_FORMATS: Final[tuple[str, ...]] = (
    "JPEG",  # also yields MPO (multi-picture JPEG) through the JPEG factory
    "PNG",  # including APNG
    "GIF",
    "WEBP",
    "BMP",
    "TIFF",
    "AVIF",
    "JPEG2000",
    "PPM",
)
"""PIL format names :func:`decode_image` will try (those compiled into the installed Pillow).

Each of them states the image size in its header, which is checked before decoding. ICO is left
out on purpose: an icon's embedded PNG may be far larger than its directory entry claims, and
PIL only finds out while loading the pixels.
"""

_EXT_BY_FORMAT: Final[dict[str, str]] = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
    "JPEG2000": "jp2",
}

# Leading bytes of the formats above. Bytes that start like an image but that PIL cannot identify
# are reported as a broken header rather than as "not an image".
_SIGNATURES: Final[tuple[bytes, ...]] = (
    b"\xff\xd8\xff",  # JPEG / MPO
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little endian
    b"MM\x00*",  # TIFF, big endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",  # JPEG 2000 (JP2 container)
    b"\xff\x4f\xff\x51",  # JPEG 2000 codestream
)

# Exceptions PIL raises on corrupt data while parsing headers or decoding pixels (each one was
# seen when fuzzing the supported formats). OSError and ValueError are the decoders' errors;
# EOFError and struct.error come from short reads; SyntaxError and TypeError are PIL's "bad
# header" signals (TypeError e.g. for a later TIFF page without dimensions, met while counting
# frames); ZeroDivisionError and IndexError come from nonsensical header fields; RuntimeError is
# how the AVIF decoder (libavif) reports corrupt data.
_DECODE_ERRORS: Final = (
    OSError,
    ValueError,
    SyntaxError,
    TypeError,
    struct.error,
    EOFError,
    ZeroDivisionError,
    IndexError,
    RuntimeError,
)

# Exceptions from parsing EXIF blocks. A broken EXIF block does not make the pixels wrong, so it
# only means "no orientation" (see _orientation).
_EXIF_ERRORS: Final = (
    OSError,
    ValueError,
    SyntaxError,
    struct.error,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
)

# EXIF orientation -> the transposition that makes the stored pixels upright. This is exactly the
# table of PIL.ImageOps.exif_transpose; it is applied directly because exif_transpose also rewrites
# the EXIF/XMP metadata of the result (which can fail on a malformed block), and the decoded
# image carries no metadata anyway.
_EXIF_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_WHITE: Final = (255, 255, 255)
_PHASH_SIZE: Final = 32  # side of the grayscale image the DCT is taken over
_PHASH_KEEP: Final = 8  # side of the low-frequency block kept: 8 x 8 = 64 bits
_ENCODERS: Final[dict[str, tuple[str, str]]] = {
    # accepted name -> (PIL format, file extension)
    "jpeg": ("JPEG", "jpg"),
    "jpg": ("JPEG", "jpg"),
    "png": ("PNG", "png"),
    "webp": ("WEBP", "webp"),
}


@dataclass(frozen=True)
class DecodedImage:
    """A successfully decoded image and what is known about its original bytes."""

    rgb: Image.Image
    """Mode ``RGB``, EXIF orientation applied (pixels upright), no metadata in ``info``."""
    format: str
    """Lowercase PIL format name: ``jpeg``, ``png``, ``gif``, ``webp``, ``bmp``, ``tiff``, ..."""
    ext: str
    """File extension to store the *original* bytes under: ``jpg``, ``png``, ``gif``, ..."""
    width: int
    """Width of the upright image."""
    height: int
    """Height of the upright image."""
    mode: str
    """Source mode as PIL reported it (``CMYK``, ``I;16``, ``P``, ``LA``, ``RGBA``, ...)."""
    orientation: int
    """EXIF orientation that was applied, 1..8 (1 if absent, unreadable or out of range)."""
    frames: int
    """Number of frames (> 1 for animated GIF/WebP/APNG and multi-page files)."""
    sha256: str
    """Hex SHA-256 of the original bytes."""
    phash: str
    """16 hex chars: 64-bit DCT perceptual hash of :attr:`rgb` (see :func:`phash`); empty when
    :func:`decode_image` was asked ``with_phash=False`` (model input stages never use it)."""


class ImageRejected(Exception):
    """Raised by :func:`decode_image` for bytes that must not be used as an image."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        """Machine-readable reason, e.g. ``not_an_image`` or ``decode_error:truncated``."""
        self.detail = detail
        """Human-readable detail (usually the underlying error message)."""

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:
        # Keep both fields when pickled across processes (Ray workers).
        return (type(self), (self.reason, self.detail))


# --------------------------------------------------------------------------------------------
# decoding


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    with_phash: bool = True,
    enough_side: int | None = None,
    enough_pixels: int | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes into an upright RGB image.

    Steps: identify the format from the header (lazily, no pixels), reject images with more than
    ``max_pixels`` pixels, count frames, decode the first frame, apply the EXIF orientation,
    normalise the mode with :func:`to_rgb` and compute the perceptual hash. The bytes are never
    re-encoded.

    The pixel budget is enforced by this function independently of ``PIL.Image.MAX_IMAGE_PIXELS``
    (it also holds when that global is ``None``). PIL's own guard still runs inside PIL: a
    ``DecompressionBombError`` (or a ``DecompressionBombWarning`` that a warnings filter turned
    into an error) is reported as ``decompression_bomb`` too, so with PIL's default limits images
    above ~179 MP are rejected whatever ``max_pixels`` says.

    :param data: the original file bytes.
    :param max_pixels: largest accepted ``width * height``.
    :param enough_side: the caller (a model's preprocessing) needs a shortest side of at most this
        many pixels. A JPEG is then decoded at the smallest DCT scale (1/2, 1/4 or 1/8, PIL's
        ``draft``) whose both sides stay at least the size the caller will resize to, which skips
        most of the decoding work; other formats decode in full. ``width``/``height`` then
        describe the reduced image. Leave unset wherever the pixels are kept or hashed.
    :param enough_pixels: the same for a caller that resizes to at most this many pixels (a VLM's
        ``max_pixels``).
    :raises ImageRejected: for any data that is not a complete, decodable image of a supported
        format; see the module docstring for the reasons. Other exceptions only signal misuse
        (a non-positive ``max_pixels``) or exhausted resources (``MemoryError``).
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    data = bytes(data)
    if not data:
        raise ImageRejected("empty_file", "zero bytes")
    sha256 = hashlib.sha256(data).hexdigest()

    try:
        src = Image.open(io.BytesIO(data), formats=_supported_formats())
    except UnidentifiedImageError as exc:
        if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ImageRejected("decode_error:bad_header", str(exc)) from exc
        raise ImageRejected("not_an_image", f"unrecognised data starting {data[:16]!r}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc) from exc

    with src:
        # Only the header has been read so far: check the claimed size before decoding anything.
        width, height = src.size
        if width <= 0 or height <= 0:
            raise ImageRejected("decode_error:zero_size", f"header claims {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected(
                "decompression_bomb",
                f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
            )
        fmt = src.format or ""
        mode = src.mode
        ext = _extension(src)
        needed = draft_size(width, height, enough_side, enough_pixels) if fmt == "JPEG" else None
        try:
            if needed is not None:
                src.draft(None, needed)  # only configures the decoder: nothing is decoded yet
            frames = int(getattr(src, "n_frames", 1))  # seeks back to frame 0 afterwards
            src.load()
            if src.width * src.height > max_pixels:  # defence in depth: a size grown by load()
                raise ImageRejected(
                    "decompression_bomb", f"decoded size {src.width}x{src.height} exceeds header"
                )
            orientation = _orientation(src)
            upright = _transpose(src, orientation)
            rgb = to_rgb(upright)
            if rgb is src:
                rgb = src.copy()  # a plain in-memory image, detached from the file object
            rgb.info = {}
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected("decompression_bomb", str(exc)) from exc
        except _DECODE_ERRORS as exc:
            raise _decode_error(exc) from exc

    return DecodedImage(
        rgb=rgb,
        format=fmt.lower(),
        ext=ext,
        width=rgb.width,
        height=rgb.height,
        mode=mode,
        orientation=orientation,
        frames=max(frames, 1),
        sha256=sha256,
        phash=phash(rgb) if with_phash else "",
    )


def draft_size(width: int, height: int, enough_side: int | None, enough_pixels: int | None) -> tuple[int, int] | None:
    """The smallest (width, height) a reduced decode may give so that a caller needing a shortest
    side of ``enough_side`` or an area of ``enough_pixels`` loses nothing; None: decode in full.

    >>> draft_size(1000, 800, 224, None)
    (280, 224)
    >>> draft_size(1000, 800, None, 50_000)
    (250, 200)
    >>> draft_size(200, 100, 224, None) is None
    True
    """
    scales = []
    if enough_side is not None:
        scales.append(enough_side / min(width, height))
    if enough_pixels is not None:
        scales.append((enough_pixels / (width * height)) ** 0.5)
    scale = max(scales, default=1.0)
    if scale >= 0.5:  # no DCT scale (1/2 at the most) would fit
        return None
    return (math.ceil(width * scale - 1e-9), math.ceil(height * scale - 1e-9))


@functools.cache
def _supported_formats() -> tuple[str, ...]:
    """:data:`SUPPORTED_FORMATS` restricted to the plugins this Pillow build registers."""
    Image.init()  # idempotent: registers every plugin that can be imported
    return tuple(f for f in SUPPORTED_FORMATS if f in Image.OPEN)


def _extension(im: Image.Image) -> str:
    fmt = (im.format or "").upper()
    if fmt == "JPEG2000" and getattr(im, "codec", "jp2") == "j2k":
        return "j2k"  # a bare codestream, not the JP2 container
    return _EXT_BY_FORMAT.get(fmt, fmt.lower())


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation of a loaded image, 1 when absent, invalid or unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except _EXIF_ERRORS:
        return 1  # a broken metadata block; the pixels themselves decoded fine
    return value if isinstance(value, int) and value in _EXIF_TRANSPOSE else 1


def _transpose(im: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation (same result as ``ImageOps.exif_transpose``)."""
    method = _EXIF_TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def _decode_error(exc: BaseException) -> ImageRejected:
    """Map an exception raised on corrupt data to a ``decode_error:*`` rejection."""
    message = str(exc)
    if "truncated" in message.lower() or isinstance(exc, EOFError):
        return ImageRejected("decode_error:truncated", message or type(exc).__name__)
    if isinstance(exc, _UnsupportedMode):
        return ImageRejected("decode_error:unsupported_mode", message)
    name = "struct_error" if isinstance(exc, struct.error) else _snake(type(exc).__name__)
    return ImageRejected(f"decode_error:{name}", message or type(exc).__name__)


def _snake(name: str) -> str:
    """``ZeroDivisionError`` -> ``zero_division_error``, ``OSError`` -> ``os_error``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# --------------------------------------------------------------------------------------------
# mode normalisation


class _UnsupportedMode(ValueError):
    """A PIL mode without a defined conversion to RGB."""


def to_rgb(im: Image.Image) -> Image.Image:
    """Normalise any PIL mode to ``RGB`` with defined semantics.

    ==================================  ========================================================
    source mode                         rule
    ==================================  ========================================================
    ``RGB`` (no transparency)           returned as is (the same object)
    ``L``, ``1`` (no transparency)      gray replicated into R, G, B
    ``P`` without transparency          palette lookup
    ``P`` with transparency, ``PA``,    composited over WHITE, then RGB (transparency is a
    ``LA``, ``RGBA``                    ``tRNS`` index, a palette with alpha or an alpha band)
    ``1``/``L``/``RGB`` + colour key    the ``transparency`` colour becomes alpha; composited
                                        over WHITE
    ``La``, ``RGBa`` (premultiplied)    composited over WHITE exactly: ``c + (255 - alpha)``
    ``CMYK``                            PIL conversion (no ICC colour management)
    ``YCbCr``, ``LAB``, ``HSV``         PIL conversion
    ``I;16``, ``I;16L``, ``I;16B``,     the full 16-bit range mapped to 8 bits: ``value >> 8``
    ``I;16N``                           (65535 -> 255), gray to RGB; signed variants clip
                                        negatives to 0 first
    ``I`` (32-bit signed)               clipped to 0..65535, then ``>> 8``, gray to RGB
    ``F`` (32-bit float)                NaN -> 0, clipped to 0..255, rounded, gray to RGB
    anything else (``RGBX``, ...)       PIL conversion if PIL has one, else ``ValueError``
    ==================================  ========================================================

    :raises ValueError: for a mode PIL cannot convert to RGB.
    """
    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB", "1") and _has_transparency(im)):
        return _over_white(im if mode == "RGBA" else im.convert("RGBA"))
    if mode == "RGB":
        return im
    if mode in ("La", "RGBa"):
        premultiplied = np.asarray(im).astype(np.int16)
        color, alpha = premultiplied[..., :-1], premultiplied[..., -1:]
        composite = np.clip(color + (255 - alpha), 0, 255).astype(np.uint8)
        if mode == "La":
            composite = np.repeat(composite, 3, axis=-1)
        return Image.fromarray(composite)
    if mode.startswith("I;16"):
        gray16 = np.asarray(im)
        if gray16.dtype.kind == "i":  # a signed 16-bit variant: negative is below black
            gray16 = np.clip(gray16, 0, None)
        return _gray8_to_rgb((gray16.astype(np.uint16) >> 8).astype(np.uint8))
    if mode == "I":
        gray32 = np.clip(np.asarray(im), 0, 65535)
        return _gray8_to_rgb((gray32 >> 8).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return _gray8_to_rgb(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _UnsupportedMode(f"no RGB conversion for mode {mode!r}: {exc}") from exc


def _has_transparency(im: Image.Image) -> bool:
    if "transparency" in im.info:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite a straight-alpha RGBA image over an opaque white background."""
    out = Image.new("RGB", rgba.size, _WHITE)
    out.paste(rgba, (0, 0), rgba)  # the RGBA image as its own mask: its alpha band is used
    return out


def _gray8_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")


# --------------------------------------------------------------------------------------------
# perceptual hash


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C`` with ``C @ x`` the DCT of a length-``n`` vector."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    matrix[0, :] = np.sqrt(1.0 / n)
    matrix.setflags(write=False)
    return matrix


def phash(im: Image.Image) -> str:
    """64-bit DCT perceptual hash as 16 lowercase hex chars.

    The image is normalised with :func:`to_rgb`, converted to grayscale (ITU-R 601 luma),
    resized to 32x32 with a Lanczos filter, transformed with a 2-D DCT-II (``C @ X @ C.T``, an
    orthonormal precomputed matrix), and the 8x8 lowest-frequency coefficients (DC included) are
    thresholded at their median: bit = coefficient > median, row-major, first bit most
    significant. Similar images have a small :func:`hamming` distance. A flat image hashes to
    ``8000000000000000`` (only the DC coefficient is above the median).
    """
    gray = to_rgb(im).convert("L").resize((_PHASH_SIZE, _PHASH_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    dct = _dct_matrix(_PHASH_SIZE)
    low = (dct @ pixels @ dct.T)[:_PHASH_KEEP, :_PHASH_KEEP]
    # Round away floating-point noise so that flat images (all AC coefficients ~1e-13) hash the
    # same on every platform instead of thresholding rounding errors.
    low = np.round(low, 6)
    bits = (low > np.median(low)).ravel()
    return np.packbits(bits).tobytes().hex()  # packbits is big-endian: bit 0 is the MSB


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length.

    :raises ValueError: for hashes of different lengths or that are not hex.
    """
    if len(a) != len(b):
        raise ValueError(f"hashes differ in length: {len(a)} vs {len(b)}")
    return (int(a, 16) ^ int(b, 16)).bit_count()


# --------------------------------------------------------------------------------------------
# resizing and encoding


def resize_max_side(rgb: Image.Image, max_side: int) -> Image.Image:
    """Downsize so that the longer side is at most ``max_side``, keeping the aspect ratio.

    Images that already fit are returned as is (never upsized). Uses Lanczos resampling; the
    shorter side is rounded and kept at least 1 pixel.

    :raises ValueError: if ``max_side`` is not positive.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    width, height = rgb.size
    longest = max(width, height)
    if longest <= max_side:
        return rgb
    scale = max_side / longest
    size = (
        max_side if width == longest else max(1, round(width * scale)),
        max_side if height == longest else max(1, round(height * scale)),
    )
    return rgb.resize(size, Image.Resampling.LANCZOS)


def encode(rgb: Image.Image, fmt: str, quality: int) -> tuple[bytes, str]:
    """Encode an image as ``jpeg`` (alias ``jpg``), ``png`` or ``webp``; returns ``(bytes, ext)``.

    Non-RGB input is normalised with :func:`to_rgb` first. ``quality`` (1..100) drives the lossy
    JPEG and WebP encoders and is ignored for PNG, which is lossless. No metadata is written.

    :raises ValueError: for an unknown format or a quality outside 1..100.
    """
    try:
        pil_format, ext = _ENCODERS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unsupported output format {fmt!r}; use jpeg, png or webp") from None
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    image = to_rgb(rgb)
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, pil_format)
    else:
        image.save(buffer, pil_format, quality=quality)
    return buffer.getvalue(), ext
