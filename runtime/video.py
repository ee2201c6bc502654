"""Video in and out through PyAV (FFmpeg's bindings; the ``[video]`` extra, its wheel ships FFmpeg).

Frames are decoded as RGB uint8 (H, W, 3) with their index and timestamp; an overlay video is
written with the source's frame rate, H.264 where this FFmpeg has an encoder for it (else
MPEG-4 Part 2), to a temporary file renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sed_trt.runtime.errors import BackendUnavailableError, ImageError, WriteError, install_hint

ENCODERS = ("libx264", "h264", "libopenh264", "mpeg4")


def import_av() -> Any:
    try:
        import av
    except ImportError:
        raise BackendUnavailableError(f"video needs PyAV: {install_hint('video')}") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the source says of itself: frame rate, frame count (0: unknown), size."""

    rate: Fraction
    frames: int
    width: int
    height: int


def probe_video(path: str | Path) -> VideoInfo:
    av = import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageError(f"video {str(path)!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return VideoInfo(
                Fraction(rate), int(stream.frames or 0), stream.codec_context.width, stream.codec_context.height
            )
    except av.error.FFmpegError as exc:
        raise ImageError(f"cannot read video {str(path)!r}: {exc}") from None


def read_frames(path: str | Path, *, stride: int = 1) -> Iterator[tuple[int, float | None, np.ndarray]]:
    """(frame index, timestamp in seconds, RGB uint8 (H, W, 3)) of every ``stride``-th frame."""
    av = import_av()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                pts = float(frame.pts * stream.time_base) if frame.pts is not None and stream.time_base else None
                yield i, pts, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise ImageError(f"cannot decode video {str(path)!r}: {exc}") from None


class VideoWriter:
    """Frames (H, W, 3) uint8 of one size in, a video file out (complete or absent)."""

    def __init__(self, path: str | Path, rate: Fraction) -> None:
        self.av = import_av()
        self.path = Path(path)
        self.rate = rate
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp{self.path.suffix}")
        self._container: Any = None
        self._stream: Any = None
        self.size: tuple[int, int] | None = None
        self.codec = ""
        self.frames = 0

    def _open(self, height: int, width: int) -> None:
        av = self.av
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.tmp), "w", format="mp4")
        for codec in ENCODERS:
            if codec in av.codecs_available:
                try:
                    self._stream = self._container.add_stream(codec, rate=self.rate)
                except (av.error.FFmpegError, ValueError):
                    continue
                self.codec = codec
                break
        else:
            raise WriteError(f"this FFmpeg has no video encoder among {ENCODERS}")
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self.size = (height, width)

    def write(self, rgb: np.ndarray) -> None:
        """Append one frame (cropped to even sides, as yuv420p needs)."""
        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
        if self._container is None:
            self._open(h, w)
        if (h, w) != self.size:
            raise WriteError(f"frame {self.frames} is {w}x{h}, the video {self.size[1]}x{self.size[0]}")  # type: ignore[index]
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> Path:
        """Flush, close and move into place; returns the path written."""
        if self._container is None:
            raise WriteError(f"{str(self.path)!r}: no frame to write")
        self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = None
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (an interrupted or failed run leaves nothing)."""
        if self._container is not None:
            with contextlib.suppress(Exception):  # the file is removed anyway
                self._container.close()
            self._container = None
        self.tmp.unlink(missing_ok=True)
