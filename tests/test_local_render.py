"""Behaviour of the local provider's preview renderer: sizing math, determinism and decodable media."""

from __future__ import annotations

import io

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageFont, ImageStat

from genplane.providers.local_render import (
    _wrap,
    image_size,
    render_preview_image,
    render_preview_video,
    video_size,
)

W, H = 160, 90


@pytest.mark.parametrize(
    ("ratio", "long_side", "expected"),
    [
        ("16:9", 1024, (1024, 576)),
        ("9:16", 1024, (576, 1024)),
        ("1:1", 1024, (1024, 1024)),
        ("4:3", 1024, (1024, 768)),
        ("21:9", 1024, (1024, 432)),  # 438.9 rounds to the nearest multiple of 16
        ("3:2", 500, (496, 336)),
        ("100:1", 64, (64, 16)),  # never below 16
        (" 2 : 3 ", 768, (512, 768)),
    ],
)
def test_image_size(ratio: str, long_side: int, expected: tuple[int, int]) -> None:
    assert image_size(ratio, long_side) == expected


def test_image_size_default_long_side() -> None:
    assert image_size("16:9") == (1024, 576)


@given(st.integers(1, 64), st.integers(1, 64), st.integers(16, 4096))
def test_image_size_is_multiple_of_16_and_keeps_the_ratio(w: int, h: int, long_side: int) -> None:
    width, height = image_size(f"{w}:{h}", long_side)
    assert width % 16 == 0 and height % 16 == 0 and min(width, height) >= 16
    assert abs(max(width, height) - long_side) <= 8
    assert (width >= height) == (w >= h) or width == height


@pytest.mark.parametrize("ratio", ["16x9", "0:9", "9:0", "", "a:b", "-1:2", "16:9:1", "1.5:1"])
def test_image_size_rejects_malformed_ratio(ratio: str) -> None:
    with pytest.raises(ValueError):
        image_size(ratio)


@pytest.mark.parametrize(
    ("ratio", "resolution", "expected"),
    [
        ("16:9", "480p", (854, 480)),  # 853.3 rounds to even
        ("16:9", "720p", (1280, 720)),
        ("9:16", "1080p", (1080, 1920)),
        ("1:1", "480p", (480, 480)),
        ("4:3", "720p", (960, 720)),
        ("21:9", "480p", (1120, 480)),
    ],
)
def test_video_size_short_side(ratio: str, resolution: str, expected: tuple[int, int]) -> None:
    size = video_size(ratio, resolution)
    assert size == expected
    assert size[0] % 2 == 0 and size[1] % 2 == 0


@pytest.mark.parametrize(
    ("ratio", "resolution"),
    [("16:9", "720"), ("16:9", "p"), ("16:9", "0p"), ("16:9", "720i"), ("16x9", "720p"), ("0:1", "720p")],
)
def test_video_size_rejects_malformed_input(ratio: str, resolution: str) -> None:
    with pytest.raises(ValueError):
        video_size(ratio, resolution)


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_image_decodes_with_requested_size_and_format(output_format: str, pil_format: str) -> None:
    data = render_preview_image("a red fox in the snow", 7, W, H, output_format)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == pil_format
        assert image.size == (W, H)
        image.load()


@pytest.mark.parametrize("output_format", ["png", "jpg", "webp"])
def test_image_is_deterministic(output_format: str) -> None:
    first = render_preview_image("a red fox", 42, W, H, output_format)
    assert render_preview_image("a red fox", 42, W, H, output_format) == first


def _pixels(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


@pytest.mark.parametrize(("other_prompt", "other_seed"), [("a red fox", 43), ("a blue whale", 42)])
def test_different_prompt_or_seed_changes_the_picture_visibly(other_prompt: str, other_seed: int) -> None:
    base = render_preview_image("a red fox", 42, W, H, "png")
    other = render_preview_image(other_prompt, other_seed, W, H, "png")
    assert base != other
    # Compare only the art above the caption band, so the difference cannot come from the text alone.
    box = (0, 0, W, H // 2)
    diff = ImageChops.difference(_pixels(base).crop(box), _pixels(other).crop(box))
    assert sum(ImageStat.Stat(diff).mean) / 3 > 10


@pytest.mark.parametrize(
    "prompt",
    ["", "   ", "x" * 5000, "word " * 2000, "Überlänge — 日本語のプロンプト ✨", "line\nbreaks\ttabs"],
)
def test_awkward_prompts_still_render(prompt: str) -> None:
    data = render_preview_image(prompt, 1, W, H, "png")
    assert _pixels(data).size == (W, H)


def test_caption_wraps_to_the_band_and_marks_truncation() -> None:
    font = ImageFont.load_default(size=12)
    lines = _wrap("a red fox " * 50 + "x" * 300, font, 150, 3)
    assert len(lines) == 3
    assert all(font.getlength(line) <= 150 for line in lines)
    assert lines[-1].endswith("...")
    assert _wrap("a red fox", font, 150, 3) == ["a red fox"]


@pytest.mark.parametrize("output_format", ["gif", "jpeg", "PNG", ""])
def test_unknown_image_format_raises(output_format: str) -> None:
    with pytest.raises(ValueError):
        render_preview_image("x", 1, W, H, output_format)


@pytest.mark.parametrize(("width", "height"), [(0, 90), (160, -1)])
def test_image_rejects_non_positive_size(width: int, height: int) -> None:
    with pytest.raises(ValueError):
        render_preview_image("x", 1, width, height, "png")


def _probe(data: bytes) -> tuple[int, int, int, float, list[str]]:
    """Return (width, height, decoded frame count, container seconds, audio codec names)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        frames = sum(1 for _ in container.decode(video=0))
        assert container.duration is not None
        audio = [stream.codec_context.name for stream in container.streams.audio]
        return width, height, frames, container.duration / av.time_base, audio


@pytest.mark.parametrize(("duration", "fps"), [(2, 12), (1, 24)])
def test_video_is_a_decodable_mp4_of_the_requested_shape(duration: int, fps: int) -> None:
    data = render_preview_video("a red fox", 3, W, H, duration, fps=fps)
    assert data[4:8] == b"ftyp"
    width, height, frames, seconds, audio = _probe(data)
    assert (width, height) == (W, H)
    assert abs(frames - duration * fps) <= 2
    assert abs(seconds - duration) <= 0.5
    assert audio == []


def test_video_with_audio_has_an_audio_stream_of_the_same_length() -> None:
    data = render_preview_video("a red fox", 3, W, H, 2, with_audio=True)
    width, height, frames, seconds, audio = _probe(data)
    assert (width, height) == (W, H)
    assert abs(frames - 24) <= 2
    assert abs(seconds - 2) <= 0.5
    assert len(audio) == 1 and audio[0] in {"aac", "mp3", "mp3float", "opus", "libopus"}
    with av.open(io.BytesIO(data), mode="r") as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        rate = container.streams.audio[0].codec_context.sample_rate
    assert abs(samples / rate - 2) <= 0.5


def test_video_is_deterministic_and_animated() -> None:
    data = render_preview_video("a red fox", 9, W, H, 1)
    assert render_preview_video("a red fox", 9, W, H, 1) == data
    assert render_preview_video("a red fox", 10, W, H, 1) != data
    with av.open(io.BytesIO(data), mode="r") as container:
        pictures = [frame.to_image() for frame in container.decode(video=0)]  # type: ignore[no-untyped-call]
    motion = ImageChops.difference(pictures[0], pictures[len(pictures) // 2])
    assert sum(ImageStat.Stat(motion).mean) / 3 > 2


@pytest.mark.parametrize(
    ("width", "height", "duration", "fps"),
    [(161, 90, 1, 12), (160, 91, 1, 12), (160, 90, 0, 12), (160, 90, 1, 0)],
)
def test_video_rejects_invalid_arguments(width: int, height: int, duration: int, fps: int) -> None:
    with pytest.raises(ValueError):
        render_preview_video("x", 1, width, height, duration, fps=fps)
