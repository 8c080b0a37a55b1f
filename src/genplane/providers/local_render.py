"""Deterministic preview art for the built-in ``local`` provider.

Deliberately not a model: it lets the pipeline run offline while staying honest about its output.
Colours and shapes derive from a SHA-256 of (prompt, seed), so a seed reproduces its bytes and any
change shows; the caption says "genplane local preview". Pure and in memory, so any thread may call it.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
import textwrap
from array import array
from dataclasses import dataclass
from fractions import Fraction

import av
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image, ImageDraw, ImageFont, ImageOps

_RATIO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_RESOLUTION = re.compile(r"^\s*(\d+)\s*[pP]\s*$")
_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_BADGE = "genplane local preview"
_AUDIO_RATE = 48_000  # accepted by AAC, MP3 and Opus alike, so a codec fallback needs no resampling.
_AUDIO_CHUNK = 1024
_Colour = tuple[int, int, int]
_Palette = tuple[_Colour, _Colour, _Colour]
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _parse_ratio(ratio: str) -> tuple[int, int]:
    match = _RATIO.match(ratio)
    if match is None or int(match[1]) == 0 or int(match[2]) == 0:
        raise ValueError(f"ratio must look like 'W:H' with positive integers, got {ratio!r}")
    return int(match[1]), int(match[2])


def _round_to(value: float, step: int) -> int:
    return max(step, round(value / step) * step)


def image_size(ratio: str, long_side: int = 1024) -> tuple[int, int]:
    """Size an image so its long side is fixed; multiples of 16 keep codecs and tilers happy."""
    if long_side <= 0:
        raise ValueError(f"long_side must be positive, got {long_side}")
    w, h = _parse_ratio(ratio)
    scale = long_side / max(w, h)
    return _round_to(w * scale, 16), _round_to(h * scale, 16)


def video_size(ratio: str, resolution: str) -> tuple[int, int]:
    """Size a video the way "720p" is meant: the short side; even dims because yuv420p needs them."""
    match = _RESOLUTION.match(resolution)
    if match is None or int(match[1]) == 0:
        raise ValueError(f"resolution must look like '720p', got {resolution!r}")
    w, h = _parse_ratio(ratio)
    scale = int(match[1]) / min(w, h)
    return _round_to(w * scale, 2), _round_to(h * scale, 2)


def _colour(rng: random.Random) -> _Colour:
    return (int(rng.random() * 256), int(rng.random() * 256), int(rng.random() * 256))


@dataclass(frozen=True)
class _Shape:
    kind: int  # 0 ellipse, 1 rounded box, 2..6 regular polygon with kind+1 sides
    x: float
    y: float
    size: float
    colour: _Colour
    alpha: int
    orbit: float
    turns: int  # whole turns per clip, so the motion reads as a loop


@dataclass(frozen=True)
class _Scene:
    palette: _Palette
    angle: float
    shapes: tuple[_Shape, ...]
    tone_hz: float


def _scene(prompt: str, seed: int) -> _Scene:
    """Derive every choice from one digest; the seed is length-prefixed so no two pairs can collide.

    A private ``random.Random`` seeded with bytes is used only through ``random()``, the one
    method whose sequence Python promises never to change, so old seeds keep their pictures.
    """
    seed_text = str(seed).encode()
    digest = hashlib.sha256(len(seed_text).to_bytes(4, "big") + seed_text + prompt.encode()).digest()
    rng = random.Random(digest)
    u = rng.random
    palette = (_colour(rng), _colour(rng), _colour(rng))
    angle = u() * 360
    shapes = tuple(
        _Shape(
            kind=int(u() * 7),
            x=u(),
            y=u() * 0.75,
            size=0.08 + u() * 0.22,
            colour=_colour(rng),
            alpha=110 + int(u() * 120),
            orbit=0.03 + u() * 0.12,
            turns=1 + int(u() * 2),
        )
        for _ in range(3 + int(u() * 4))
    )
    return _Scene(palette, angle, shapes, tone_hz=220 + u() * 220)


def _background(palette: _Palette, angle: float, width: int, height: int) -> Image.Image:
    """Rotate an oversized gradient and crop its middle, so any angle covers the frame with no corners."""
    side = math.ceil(math.hypot(width, height))
    ramp = Image.linear_gradient("L").resize((side, side)).rotate(angle, resample=Image.Resampling.BILINEAR)
    left, top = (side - width) // 2, (side - height) // 2
    mask = ramp.crop((left, top, left + width, top + height))
    return ImageOps.colorize(mask, black=palette[0], white=palette[1], mid=palette[2]).convert("RGBA")


def _shapes_layer(scene: _Scene, width: int, height: int, phase: float) -> Image.Image:
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    unit = min(width, height)
    for shape in scene.shapes:
        turn = 2 * math.pi * (phase * shape.turns + shape.x)
        cx = (shape.x + shape.orbit * math.cos(turn)) * width
        cy = (shape.y + shape.orbit * math.sin(turn)) * height
        r = max(1.0, shape.size * unit)
        fill = (*shape.colour, shape.alpha)
        if shape.kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape.kind == 1:
            draw.rounded_rectangle((cx - r, cy - r * 0.7, cx + r, cy + r * 0.7), radius=r * 0.25, fill=fill)
        else:
            draw.regular_polygon((cx, cy, r), shape.kind + 1, rotation=phase * 360 * shape.turns, fill=fill)
    return layer


def _wrap(text: str, font: _Font, max_width: float, max_lines: int) -> list[str]:
    """``textwrap`` budgets characters, not pixels: shrink the budget until every line truly fits."""
    chars = max(4, int(max_width / max(1.0, font.getlength("n"))))
    while True:
        lines = textwrap.wrap(text, chars, max_lines=max_lines, placeholder="...")
        if chars == 4 or all(font.getlength(line) <= max_width for line in lines):
            return lines
        chars = max(4, chars * 9 // 10)


def _caption_layer(prompt: str, width: int, height: int) -> Image.Image:
    """A dark band keeps the caption legible over any palette; the badge line states what this is."""
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(8, min(width, height) // 16)
    font, small = ImageFont.load_default(size=size), ImageFont.load_default(size=max(7, size * 3 // 4))
    pad, gap = max(2, size // 2), max(1, size // 5)
    band_top = height - max(height * 30 // 100, pad * 2 + size + gap + size)
    draw.rectangle((0, band_top, width, height), fill=(0, 0, 0, 150))
    max_lines = max(1, (height - band_top - 2 * pad - size) // (size + gap))
    y = band_top + pad
    for line in _wrap(prompt, font, width - 2 * pad, max_lines):
        draw.text((pad, y), line, font=font, fill=(255, 255, 255, 255))
        y += size + gap
    draw.text((pad, height - pad - size * 3 // 4), _BADGE, font=small, fill=(255, 255, 255, 170))
    return layer


def _check_dims(width: int, height: int, step: int = 1) -> None:
    if width <= 0 or height <= 0 or width % step or height % step:
        raise ValueError(f"width and height must be positive multiples of {step}, got {width}x{height}")


def render_preview_image(prompt: str, seed: int, width: int, height: int, output_format: str) -> bytes:
    """Render the composition once; webp is lossless so equal inputs give equal bytes in every format."""
    if output_format not in _IMAGE_FORMATS:
        raise ValueError(f"output_format must be one of {sorted(_IMAGE_FORMATS)}, got {output_format!r}")
    _check_dims(width, height)
    scene = _scene(prompt, seed)
    image = _background(scene.palette, scene.angle, width, height)
    image.alpha_composite(_shapes_layer(scene, width, height, 0.0))
    image.alpha_composite(_caption_layer(prompt, width, height))
    out = io.BytesIO()
    # Lossless keeps WebP byte-stable; quality is JPEG's fidelity and WebP's effort; PNG ignores both.
    image.convert("RGB").save(out, format=_IMAGE_FORMATS[output_format], quality=90, lossless=True)
    return out.getvalue()


def _first_encoder(names: tuple[str, ...]) -> str:
    """FFmpeg builds differ in which encoders they ship; take the best one this build has."""
    for name in names:
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            continue
        return name
    raise RuntimeError(f"none of the encoders {names} is available in this FFmpeg build")


def _tone(scene: _Scene, seconds: int) -> list[AudioFrame]:
    """A quiet sine with short fades: audible proof of an audio track, without clicks at the ends."""
    total, fade = seconds * _AUDIO_RATE, _AUDIO_RATE // 50
    step = 2 * math.pi * scene.tone_hz / _AUDIO_RATE
    envelope = (min(1, (i + 1) / fade, (total - i) / fade) for i in range(total))
    wave = array("f", (0.1 * level * math.sin(step * i) for i, level in enumerate(envelope)))
    frames = []
    for start in range(0, total, _AUDIO_CHUNK):
        part = wave[start : start + _AUDIO_CHUNK]
        frame = AudioFrame(format="flt", layout="mono", samples=len(part))
        frame.planes[0].update(part.tobytes())
        frame.sample_rate, frame.pts, frame.time_base = _AUDIO_RATE, start, Fraction(1, _AUDIO_RATE)
        frames.append(frame)
    return frames


def render_preview_video(
    prompt: str,
    seed: int,
    width: int,
    height: int,
    duration_seconds: int,
    fps: int = 12,
    with_audio: bool = False,
) -> bytes:
    """Animate the image composition as a seamless loop: shapes orbit and the palette cross-fades.

    The static parts (both palettes and the caption) are drawn once, so a frame costs one blend and
    one shape layer; libx264's ultrafast preset keeps encoding cheaper than drawing.
    """
    _check_dims(width, height, 2)  # yuv420p halves the chroma planes
    if duration_seconds <= 0 or fps <= 0:
        raise ValueError(f"duration_seconds and fps must be positive, got {duration_seconds}, {fps}")
    scene = _scene(prompt, seed)
    shifted = (scene.palette[2], scene.palette[0], scene.palette[1])
    start = _background(scene.palette, scene.angle, width, height)
    end = _background(shifted, scene.angle + 90, width, height)
    caption = _caption_layer(prompt, width, height)
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        video = container.add_stream(_first_encoder(("libx264", "h264", "mpeg4")), rate=fps)
        if not isinstance(video, VideoStream):
            raise RuntimeError("the video encoder did not produce a video stream")
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if video.codec_context.name == "libx264":
            video.options = {"preset": "ultrafast", "crf": "23"}
        else:
            video.bit_rate = width * height * fps // 4
        audio: AudioStream | None = None
        tone: list[AudioFrame] = []
        if with_audio:
            stream = container.add_stream(_first_encoder(("aac", "mp3", "libopus")), rate=_AUDIO_RATE)
            if not isinstance(stream, AudioStream):
                raise RuntimeError("the audio encoder did not produce an audio stream")
            audio, tone = stream, _tone(scene, duration_seconds)
            audio.layout = "mono"
        frames, sent = duration_seconds * fps, 0
        for index in range(frames):
            phase = index / frames
            picture = Image.blend(start, end, 0.5 - 0.5 * math.cos(2 * math.pi * phase))
            picture.alpha_composite(_shapes_layer(scene, width, height, phase))
            picture.alpha_composite(caption)
            frame = VideoFrame.from_bytes(picture.tobytes(), width, height, "rgba")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
            # Feed audio up to the same instant so the muxer can interleave instead of buffering it all.
            while audio is not None and sent < len(tone) and sent * _AUDIO_CHUNK * fps <= index * _AUDIO_RATE:
                container.mux(audio.encode(tone[sent]))
                sent += 1
        container.mux(video.encode(None))
        if audio is not None:
            for chunk in tone[sent:]:
                container.mux(audio.encode(chunk))
            container.mux(audio.encode(None))
    return out.getvalue()
