"""Where a downloaded output file goes, and writing it without leaving half a file behind."""

from __future__ import annotations

import mimetypes
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

#: The extensions genplane stores outputs under; mimetypes' own guesses differ (.jpe, .jfif).
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "audio/mpeg": ".mp3",
}
_SAFE_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def extension(url: str, content_type: str | None) -> str:
    """The file's extension: the URL's own when it has a sane one, else the content type's.

    Output URLs end in ``<n>.<ext>``, so the URL usually decides; a redirect to a
    presigned bucket URL or a URL without a suffix falls back to the content type."""
    suffix = PurePosixPath(urlsplit(url).path).suffix
    if _SAFE_EXTENSION.match(suffix):
        return suffix.lower()
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(media) or mimetypes.guess_extension(media) or ".bin"


def target(directory: Path, stem: str, url: str, content_type: str | None) -> Path:
    """``directory/<stem><ext>``; the stem is reduced to characters safe in any file system."""
    safe_stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "output"
    return directory / f"{safe_stem}{extension(url, content_type)}"


def partial(path: Path) -> Path:
    """Where a file is written before it is complete: renamed into place only then, so a
    crash or a dropped connection never leaves a truncated file under the final name."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")
