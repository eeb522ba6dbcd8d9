"""Video frames with PyAV: decode in order, sample at a fixed rate, never load the whole video.

Frames have no source bytes of their own: each sampled frame is encoded once in the configured
format (JPEG quality 95 by default; PNG for lossless) and carries its index and timestamp.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Frame:
    index: int  # frame number in decode order
    time_s: float  # presentation time in seconds
    rgb: np.ndarray  # H x W x 3 uint8


def iter_frames(fileobj, *, fps: float | None = None, max_frames: int | None = None) -> Iterator[Frame]:
    """Decode the first video stream; yield one frame per 1/fps seconds (every frame if fps is None)."""
    with av.open(fileobj, mode="r") as container:
        if not container.streams.video:
            raise av.error.InvalidDataError(0, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_t = 0.0
        emitted = 0
        for index, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
            if fps is not None and t + 1e-6 < next_t:
                continue
            yield Frame(index, max(t, 0.0), frame.to_ndarray(format="rgb24"))
            emitted += 1
            if max_frames is not None and emitted >= max_frames:
                return
            if fps is not None:
                while next_t <= t + 1e-6:
                    next_t += 1.0 / fps


def encode_frame(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> tuple[bytes, str]:
    buf = io.BytesIO()
    im = Image.fromarray(rgb)
    if fmt == "png":
        im.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "png"
    if fmt == "webp":
        im.save(buf, "WEBP", quality=quality)
        return buf.getvalue(), "webp"
    im.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue(), "jpg"


def read_video_frames(loc, rel: str, video_cfg) -> Iterator:
    """Source items for the sampled frames of one video file (see weaverdata.io.sources)."""
    from weaverdata.items import SourceItem

    fps = video_cfg.fps if video_cfg is not None else 1.0
    max_frames = video_cfg.max_frames if video_cfg is not None else None
    fmt = video_cfg.frame_format if video_cfg is not None else "jpeg"
    quality = video_cfg.frame_quality if video_cfg is not None else 95
    last_index = -1
    try:
        with loc.open(rel, "rb") as f:
            for frame in iter_frames(f, fps=fps, max_frames=max_frames):
                last_index = frame.index
                data, ext = encode_frame(frame.rgb, fmt, quality)
                yield SourceItem(
                    f"{rel}#frame={frame.index}",
                    payload={"image": data, "caption": "", "meta": {}, "video": {"frame_index": frame.index, "time_s": round(frame.time_s, 6)}},
                )
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        where = f"after frame {last_index}" if last_index >= 0 else "at open"
        yield SourceItem(f"{rel}#error@{last_index + 1}", error=("video_decode_error", f"{where}: {exc}"))
