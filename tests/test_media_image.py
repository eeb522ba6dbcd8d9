"""Tests of weaverdata.media.image: bad-input corpus, bombs, orientation, modes, hashes, fuzz."""

from __future__ import annotations

import hashlib
import io
import pathlib
import pickle
import random
import tarfile
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from tests.corpus import (
    ANIMATED_COLOURS,
    ROTATED_LEFT,
    ROTATED_RIGHT,
    ROTATED_SIZE,
    bomb_png,
    image_bytes,
    make_tar,
    photo,
    rotated_jpeg,
    write_bad_image_corpus,
)
from weaverdata.media.image import (
    DecodedImage,
    ImageRejected,
    decode_image,
    draft_size,
    encode,
    hamming,
    phash,
    resize_max_side,
    to_rgb,
)

WHITE = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_bad_image_corpus(folder)


def _decode_case(corpus: tuple[pathlib.Path, dict[str, str | None]], name: str) -> DecodedImage:
    folder, _ = corpus
    return decode_image((folder / name).read_bytes())


def _reason(data: bytes, **kwargs: int) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)
    return info.value.reason


def _pixels(decoded: DecodedImage) -> np.ndarray:
    return np.asarray(decoded.rgb, dtype=np.int16)


def _small_photo(name: str, side: int = 128) -> Image.Image:
    return resize_max_side(Image.fromarray(photo(name)), side)


def _assert_well_formed(decoded: DecodedImage, data: bytes) -> None:
    assert decoded.rgb.mode == "RGB"
    assert decoded.rgb.size == (decoded.width, decoded.height)
    assert decoded.width > 0 and decoded.height > 0
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert len(decoded.phash) == 16 and int(decoded.phash, 16) >= 0
    assert decoded.frames >= 1
    assert 1 <= decoded.orientation <= 8
    assert decoded.format and decoded.ext and decoded.mode


# --------------------------------------------------------------------------------------------
# the corpus


CORPUS_NAMES = [
    "zero.jpg",
    "truncated.jpg",
    "bomb.png",
    "not_image.jpg",
    "cmyk.jpg",
    "gray16.png",
    "palette_transparent.png",
    "animated.gif",
    "rotated.jpg",
    "la.png",
    "rgba.png",
    "gray.jpg",
    "photo.jpg",
]


def test_corpus_lists_every_case(corpus: tuple[pathlib.Path, dict[str, str | None]]) -> None:
    folder, expected = corpus
    assert sorted(expected) == sorted(CORPUS_NAMES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CORPUS_NAMES)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_case_gets_expected_verdict(
    corpus: tuple[pathlib.Path, dict[str, str | None]], name: str
) -> None:
    folder, expected = corpus
    data = (folder / name).read_bytes()
    if expected[name] is None:
        _assert_well_formed(decode_image(data), data)
    else:
        assert _reason(data) == expected[name]


def test_accepted_formats_modes_and_extensions(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    expected = {
        "cmyk.jpg": ("jpeg", "jpg", "CMYK"),
        "gray16.png": ("png", "png", "I;16"),
        "palette_transparent.png": ("png", "png", "P"),
        "animated.gif": ("gif", "gif", "P"),
        "rotated.jpg": ("jpeg", "jpg", "RGB"),
        "la.png": ("png", "png", "LA"),
        "rgba.png": ("png", "png", "RGBA"),
        "gray.jpg": ("jpeg", "jpg", "L"),
        "photo.jpg": ("jpeg", "jpg", "RGB"),
    }
    for name, (fmt, ext, mode) in expected.items():
        decoded = _decode_case(corpus, name)
        assert (decoded.format, decoded.ext, decoded.mode) == (fmt, ext, mode), name


def test_decoded_image_carries_no_file_or_metadata(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    for name in ("photo.jpg", "rotated.jpg"):
        decoded = _decode_case(corpus, name)
        assert type(decoded.rgb) is Image.Image  # not a JpegImageFile bound to a closed buffer
        assert decoded.rgb.info == {}


# --------------------------------------------------------------------------------------------
# decompression bombs


@pytest.mark.parametrize("pil_limit", ["default", None], ids=["pil-default", "pil-unlimited"])
def test_bomb_rejected_fast_without_allocating(
    monkeypatch: pytest.MonkeyPatch, pil_limit: str | None
) -> None:
    if pil_limit is None:  # our check alone must stop it, whatever PIL's global says
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    loads: list[object] = []
    original_load = ImageFile.ImageFile.load

    def recording_load(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    data = bomb_png(100_000, 100_000)
    assert len(data) < 2_000

    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageRejected) as info:
            decode_image(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.value.reason == "decompression_bomb"
    assert elapsed < 1.0
    assert peak < 50 * 1024 * 1024
    assert loads == []  # no pixel decoding was even started

    # The recorder does see the load of an ordinary PNG, so the empty list above means something.
    decode_image(image_bytes(Image.new("L", (8, 8)), "PNG"))
    assert loads


def test_max_pixels_is_enforced_below_pil_limits() -> None:
    data = image_bytes(Image.new("RGB", (100, 100), (10, 20, 30)), "PNG")
    assert decode_image(data, max_pixels=10_000).width == 100
    assert _reason(data, max_pixels=9_999) == "decompression_bomb"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_between_pil_soft_limit_and_max_pixels() -> None:
    # 90 MP: above PIL's soft limit (a warning only), far above our budget.
    assert _reason(bomb_png(10_000, 9_000), max_pixels=1_000_000) == "decompression_bomb"


def test_pil_bomb_warning_escalated_to_error_is_a_bomb() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert _reason(bomb_png(10_000, 9_000)) == "decompression_bomb"


def test_decode_leaves_pil_globals_alone(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    folder, expected = corpus
    for name in expected:
        try:
            decode_image((folder / name).read_bytes())
        except ImageRejected:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_invalid_max_pixels_is_a_usage_error() -> None:
    with pytest.raises(ValueError):
        decode_image(b"\x89PNG", max_pixels=0)


# --------------------------------------------------------------------------------------------
# rejection reasons


def test_truncated_png_is_truncated() -> None:
    data = image_bytes(_small_photo("coffee"), "PNG")
    for fraction in (0.2, 0.6, 0.95):
        assert _reason(data[: int(len(data) * fraction)]) == "decode_error:truncated"


def test_truncated_jpeg_at_several_points_is_truncated() -> None:
    data = image_bytes(Image.fromarray(photo("coffee")), "JPEG", quality=90)
    for fraction in (0.1, 0.6, 0.9):
        assert _reason(data[: int(len(data) * fraction)]) == "decode_error:truncated"


def test_known_signature_with_garbage_header_is_a_decode_error() -> None:
    assert _reason(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64) == "decode_error:bad_header"


def test_text_and_unsupported_formats_are_not_images() -> None:
    assert _reason(b"hello world, definitely not pixels") == "not_an_image"
    # EPS would make PIL shell out to Ghostscript: it is never offered untrusted bytes.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert _reason(eps) == "not_an_image"


def test_image_rejected_round_trips_through_pickle() -> None:
    error = pickle.loads(pickle.dumps(ImageRejected("decode_error:truncated", "cut short")))
    assert (error.reason, error.detail) == ("decode_error:truncated", "cut short")
    assert "decode_error:truncated" in str(error)


# --------------------------------------------------------------------------------------------
# orientation and mode normalisation through decode_image


@pytest.mark.parametrize("orientation", [6, 8])
def test_rotated_jpeg_comes_out_upright(orientation: int) -> None:
    decoded = decode_image(rotated_jpeg(orientation))
    assert (decoded.width, decoded.height) == ROTATED_SIZE
    assert decoded.orientation == orientation
    pixels = _pixels(decoded)
    width, height = ROTATED_SIZE
    left = pixels[:, : width // 2 - 4].reshape(-1, 3).mean(axis=0)
    right = pixels[:, width // 2 + 4 :].reshape(-1, 3).mean(axis=0)
    assert np.abs(left - ROTATED_LEFT).max() < 10
    assert np.abs(right - ROTATED_RIGHT).max() < 10


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(orientation: int) -> None:
    stored = _small_photo("astronaut", 48).crop((0, 0, 48, 30))  # asymmetric, not square
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = image_bytes(stored, "PNG", exif=exif.tobytes())
    decoded = decode_image(data)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert decoded.orientation == orientation
    assert decoded.rgb.size == reference.size == (decoded.width, decoded.height)
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(reference))


# --------------------------------------------------------------------------------------------
# reduced decoding for model inputs (enough_side / enough_pixels)


def test_draft_size_keeps_what_the_caller_needs() -> None:
    assert draft_size(1000, 800, 224, None) == (280, 224)
    assert draft_size(1000, 800, None, 50_000) == (250, 200)
    assert draft_size(1000, 800, 224, 50_000) == (280, 224)  # the larger need wins
    assert draft_size(400, 300, 224, None) is None  # no DCT scale would keep 224
    assert draft_size(1000, 800, None, None) is None


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_jpeg_decode_is_smaller_but_never_below_the_need(orientation: int) -> None:
    photo = _small_photo("astronaut", 512).crop((0, 0, 512, 400))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = image_bytes(photo, "JPEG", exif=exif.tobytes())
    full = decode_image(data)
    reduced = decode_image(data, enough_side=64)
    assert (full.width, full.height) == ((512, 400) if orientation == 1 else (400, 512))
    # 64 / 400 needs 0.16 of the size: 1/4 is the smallest DCT scale that keeps it (1/8 gives 50)
    assert (reduced.width, reduced.height) == ((128, 100) if orientation == 1 else (100, 128))
    assert reduced.sha256 == full.sha256
    # the same picture: the full decode shrunk to the reduced size is close to it
    shrunk = np.asarray(full.rgb.resize(reduced.rgb.size, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(shrunk - np.asarray(reduced.rgb, dtype=np.float32)).mean() < 8
    by_area = decode_image(data, enough_pixels=128 * 100)
    assert by_area.rgb.size == reduced.rgb.size


def test_reduced_decode_leaves_other_formats_and_the_pixel_limit_alone() -> None:
    png = image_bytes(_small_photo("astronaut", 300), "PNG")
    assert decode_image(png, enough_side=32).rgb.size == (300, 300)  # only JPEG has DCT scaling
    big = image_bytes(Image.new("RGB", (1200, 1000)), "JPEG")
    with pytest.raises(ImageRejected, match="decompression_bomb"):
        decode_image(big, max_pixels=1_000_000, enough_side=32)  # checked on the header's size


def test_invalid_orientation_is_ignored() -> None:
    exif = Image.Exif()
    exif[0x0112] = 42
    decoded = decode_image(image_bytes(Image.new("RGB", (30, 20)), "PNG", exif=exif.tobytes()))
    assert (decoded.orientation, decoded.width, decoded.height) == (1, 30, 20)


def test_gray16_png_keeps_gradient(corpus: tuple[pathlib.Path, dict[str, str | None]]) -> None:
    decoded = _decode_case(corpus, "gray16.png")
    pixels = _pixels(decoded)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    row = pixels[decoded.height // 2, :, 0]
    assert row[0] < row[-1]
    assert (np.diff(row) >= 0).all()  # the ordering survives the 16 -> 8 bit mapping
    assert 0 < pixels.mean() < 255 and len(np.unique(row)) > 200  # neither clipped nor flat
    expected = np.linspace(0, 65535, decoded.width).round().astype(np.uint16) >> 8
    assert np.array_equal(row, expected)


def test_palette_transparency_becomes_white(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    decoded = _decode_case(corpus, "palette_transparent.png")
    pixels = _pixels(decoded)
    half = decoded.width // 2
    assert (pixels[:, :half] == WHITE).all()  # transparent red index -> white, not red
    assert (pixels[:, half:] == (0, 255, 0)).all()


def test_la_and_rgba_composite_over_white(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    la = _pixels(_decode_case(corpus, "la.png"))
    half = la.shape[1] // 2
    assert (la[:, :half] == WHITE).all() and (la[:, half:] == 0).all()

    rgba = _pixels(_decode_case(corpus, "rgba.png"))
    chelsea = photo("chelsea").astype(np.int16)
    top = chelsea.shape[0] // 2
    assert (rgba[:top] == WHITE).all()
    assert np.array_equal(rgba[top:], chelsea[top:])


def test_cmyk_jpeg_is_close_to_the_photo(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    decoded = _decode_case(corpus, "cmyk.jpg")
    difference = np.abs(_pixels(decoded) - photo("astronaut").astype(np.int16))
    assert difference.mean() < 6


def test_gray_jpeg_is_gray(corpus: tuple[pathlib.Path, dict[str, str | None]]) -> None:
    pixels = _pixels(_decode_case(corpus, "gray.jpg"))
    assert (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels.std() > 20


def test_animated_gif_first_frame(corpus: tuple[pathlib.Path, dict[str, str | None]]) -> None:
    decoded = _decode_case(corpus, "animated.gif")
    assert decoded.frames == 3
    assert (_pixels(decoded) == ANIMATED_COLOURS[0]).all()


def test_animated_webp_and_apng_count_frames() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ANIMATED_COLOURS]
    for fmt, ext in (("WEBP", "webp"), ("PNG", "png")):
        params = {"lossless": True} if fmt == "WEBP" else {}
        data = image_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
        decoded = decode_image(data)
        assert (decoded.ext, decoded.frames) == (ext, 3)
        assert (_pixels(decoded) == ANIMATED_COLOURS[0]).all()


def test_other_formats_and_extensions() -> None:
    im = _small_photo("coffee", 64)
    for fmt, ext in (("BMP", "bmp"), ("TIFF", "tiff"), ("WEBP", "webp"), ("PNG", "png")):
        decoded = decode_image(image_bytes(im, fmt))
        assert (decoded.format, decoded.ext) == (fmt.lower(), ext)


def test_multi_picture_and_jpeg2000_extensions() -> None:
    left, right = _small_photo("coffee", 64), _small_photo("chelsea", 64)
    mpo = decode_image(image_bytes(left, "MPO", save_all=True, append_images=[right]))
    assert (mpo.format, mpo.ext, mpo.frames) == ("mpo", "jpg", 2)
    jp2 = decode_image(image_bytes(left, "JPEG2000"))
    j2k = decode_image(image_bytes(left, "JPEG2000", no_jp2=True))
    assert (jp2.format, jp2.ext, j2k.ext) == ("jpeg2000", "jp2", "j2k")


def test_icon_files_are_not_offered_to_pil() -> None:
    assert _reason(image_bytes(_small_photo("coffee", 32), "ICO")) == "not_an_image"


def test_sha256_is_of_the_original_bytes(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    folder, expected = corpus
    for name, reason in expected.items():
        if reason is None:
            data = (folder / name).read_bytes()
            assert decode_image(data).sha256 == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# to_rgb rules


def _gray_ramp(dtype: type, values: list[float]) -> np.ndarray:
    return np.array([values], dtype=dtype)


def test_to_rgb_returns_rgb_as_is() -> None:
    im = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(im) is im


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, WHITE),
        ("1", 0, (0, 0, 0)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("RGBX", (9, 8, 7, 0), (9, 8, 7)),
        ("LA", (0, 0), WHITE),
        ("LA", (0, 255), (0, 0, 0)),
        ("RGBA", (255, 0, 0, 0), WHITE),
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
        ("La", (0, 0), WHITE),
        ("La", (100, 255), (100, 100, 100)),
        ("RGBa", (0, 0, 0, 0), WHITE),
        ("RGBa", (50, 60, 70, 128), (177, 187, 197)),
    ],
)
def test_to_rgb_simple_modes(mode: str, colour: object, expected: tuple[int, int, int]) -> None:
    rgb = to_rgb(Image.new(mode, (3, 2), colour))  # type: ignore[arg-type]
    assert rgb.mode == "RGB" and rgb.size == (3, 2)
    assert np.abs(np.asarray(rgb, dtype=np.int16) - expected).max() <= 1


def test_to_rgb_lab() -> None:
    rgb = to_rgb(Image.new("LAB", (2, 2), (255, 128, 128)))  # L*=100, neutral: white
    assert np.asarray(rgb).min() >= 250


def test_to_rgb_palette_with_and_without_transparency() -> None:
    im = Image.frombytes("P", (2, 1), bytes([0, 1]))
    im.putpalette([10, 20, 30, 40, 50, 60])
    assert np.asarray(to_rgb(im)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    im.info["transparency"] = 1
    assert np.asarray(to_rgb(im)).tolist() == [[[10, 20, 30], list(WHITE)]]
    pa = im.convert("PA")
    assert np.asarray(to_rgb(pa)).tolist() == [[[10, 20, 30], list(WHITE)]]


def test_to_rgb_colour_key_transparency() -> None:
    im = Image.new("RGB", (2, 1), (5, 5, 5))
    im.putpixel((1, 0), (9, 9, 9))
    im.info["transparency"] = (5, 5, 5)
    assert np.asarray(to_rgb(im)).tolist() == [[list(WHITE), [9, 9, 9]]]
    gray = Image.frombytes("L", (2, 1), bytes([3, 0]))
    gray.info["transparency"] = 3
    assert np.asarray(to_rgb(gray)).tolist() == [[list(WHITE), [0, 0, 0]]]


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_to_rgb_sixteen_bit_uses_full_range(mode: str) -> None:
    values = [0, 255, 256, 32768, 65280, 65535]
    # PIL's convert() between 16-bit modes clips to 8 bits, so build each mode from raw bytes.
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
    im = Image.frombytes(mode, (len(values), 1), np.array(values, dtype=dtype).tobytes())
    assert im.mode == mode
    assert np.asarray(to_rgb(im))[0, :, 0].tolist() == [v >> 8 for v in values]


def test_to_rgb_thirty_two_bit_int_clips_then_shifts() -> None:
    values = [-5, 0, 4095, 65535, 70000]
    im = Image.fromarray(_gray_ramp(np.int32, values))
    assert im.mode == "I"
    assert np.asarray(to_rgb(im))[0, :, 0].tolist() == [0, 0, 15, 255, 255]


def test_to_rgb_float_clips() -> None:
    values = [-3.0, 0.4, 127.6, 255.0, 1e9, float("nan")]
    im = Image.fromarray(_gray_ramp(np.float32, values))
    assert im.mode == "F"
    assert np.asarray(to_rgb(im))[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]


# --------------------------------------------------------------------------------------------
# perceptual hash


def _recompressed(im: Image.Image) -> Image.Image:
    smaller = im.resize((im.width * 9 // 10, im.height * 9 // 10), Image.Resampling.BICUBIC)
    data, _ = encode(smaller, "jpeg", 70)
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_phash_is_stable_under_resize_and_recompression(name: str) -> None:
    im = Image.fromarray(photo(name))
    assert hamming(phash(im), phash(_recompressed(im))) <= 6


def test_phash_separates_different_photos() -> None:
    names = ("astronaut", "coffee", "chelsea")
    hashes = {name: phash(Image.fromarray(photo(name))) for name in names}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert hamming(hashes[first], hashes[second]) > 16, (first, second)


def test_phash_format_and_mode_independence() -> None:
    im = Image.fromarray(photo("coffee"))
    value = phash(im)
    assert len(value) == 16 and value == value.lower()
    assert phash(im.convert("RGBA")) == value  # opaque alpha composites to the same pixels
    assert phash(Image.new("RGB", (40, 30), (12, 200, 7))) == "8000000000000000"


def test_decoded_phash_matches_phash_of_rgb(
    corpus: tuple[pathlib.Path, dict[str, str | None]],
) -> None:
    decoded = _decode_case(corpus, "photo.jpg")
    assert decoded.phash == phash(decoded.rgb)


def test_hamming() -> None:
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    with pytest.raises(ValueError):
        hamming("00", "000")
    with pytest.raises(ValueError):
        hamming("zz", "00")


# --------------------------------------------------------------------------------------------
# resize and encode


def test_resize_max_side_only_downsizes_and_keeps_aspect() -> None:
    im = Image.new("RGB", (400, 100))
    small = resize_max_side(im, 200)
    assert small.size == (200, 50)
    assert resize_max_side(im, 400) is im
    assert resize_max_side(im, 1000) is im
    assert resize_max_side(Image.new("RGB", (90, 300)), 30).size == (9, 30)
    assert resize_max_side(Image.new("RGB", (1000, 1)), 10).size == (10, 1)
    with pytest.raises(ValueError):
        resize_max_side(im, 0)


@pytest.mark.parametrize(
    ("fmt", "ext", "lossless"),
    [("jpeg", "jpg", False), ("jpg", "jpg", False), ("png", "png", True), ("WEBP", "webp", False)],
)
def test_encode_round_trips(fmt: str, ext: str, lossless: bool) -> None:
    im = _small_photo("chelsea")
    data, got_ext = encode(im, fmt, 90)
    assert got_ext == ext
    decoded = decode_image(data)
    assert decoded.ext == ext and decoded.rgb.size == im.size
    difference = np.abs(np.asarray(decoded.rgb, dtype=np.int16) - np.asarray(im, dtype=np.int16))
    assert difference.max() == 0 if lossless else difference.mean() < 6


def test_encode_quality_changes_size_and_rejects_bad_arguments() -> None:
    im = _small_photo("astronaut")
    assert len(encode(im, "jpeg", 20)[0]) < len(encode(im, "jpeg", 95)[0])
    with pytest.raises(ValueError):
        encode(im, "gif", 90)
    with pytest.raises(ValueError):
        encode(im, "jpeg", 0)
    with pytest.raises(ValueError):
        encode(im, "jpeg", 101)


def test_encode_normalises_mode() -> None:
    data, _ = encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "jpeg", 90)
    assert (np.asarray(decode_image(data).rgb) > 250).all()


# --------------------------------------------------------------------------------------------
# fuzz: nothing but ImageRejected ever escapes


SIGNATURES = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
]


def _decode_or_reject(data: bytes) -> str:
    try:
        decoded = decode_image(data)
    except ImageRejected as error:
        assert error.reason
        return error.reason
    _assert_well_formed(decoded, data)
    return "accepted"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
def test_fuzz_random_bytes_only_raise_image_rejected() -> None:
    rng = random.Random(20240611)
    reasons: set[str] = set()
    for _ in range(200):
        prefix = rng.choice(SIGNATURES)
        body = rng.randbytes(rng.randint(0, 4096))
        reasons.add(_decode_or_reject(prefix + body))
    assert "not_an_image" in reasons
    assert any(reason.startswith("decode_error:") for reason in reasons)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fuzz_mutated_real_images_only_raise_image_rejected(fmt: str) -> None:
    original = image_bytes(_small_photo("astronaut"), fmt)
    rng = random.Random(7 if fmt == "JPEG" else 11)
    reasons: set[str] = set()
    for _ in range(200):
        data = bytearray(original)
        if rng.random() < 0.4:
            data = data[: rng.randint(0, len(data) - 1)]
        for _ in range(rng.choice([0, 1, 1, 2, 4, 16])):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        reasons.add(_decode_or_reject(bytes(data)))
    assert "decode_error:truncated" in reasons


# --------------------------------------------------------------------------------------------
# corpus helpers


def test_make_tar_keeps_names_order_and_duplicates(tmp_path: pathlib.Path) -> None:
    members = [
        ("a.jpg", b"first"),
        ("../evil.jpg", b"escape"),
        ("a.jpg", b"second"),
        ("dir/b.txt", b""),
    ]
    path = tmp_path / "shard.tar"
    make_tar(path, members)
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
        assert [info.name for info in infos] == [name for name, _ in members]
        contents = [tar.extractfile(info).read() for info in infos]  # type: ignore[union-attr]
    assert contents == [data for _, data in members]
