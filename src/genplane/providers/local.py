"""The built-in ``local`` provider: preview art rendered in-process.

It exists so the whole pipeline (credits, lifecycle, storage, webhooks) can run with
no keys and no network. Rendering is CPU work, so it runs on a thread and never
blocks the event loop; a configurable delay lets demos and tests observe the
``processing`` state and exercise cancel and crash recovery.
"""

from __future__ import annotations

import asyncio
import time
import zlib

from genplane.ids import new_id
from genplane.providers.base import ProviderJob, ProviderOutput, ProviderResult
from genplane.providers.local_render import (
    image_size,
    render_preview_image,
    render_preview_video,
    video_size,
)

_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}


def _seed(job: ProviderJob, index: int) -> int:
    base = job.specific.get("generation_seed")
    if base is None:
        base = zlib.crc32(job.generation_id.encode())
    return (int(base) + index) % 2**32


class LocalProvider:
    provider_id = "local"

    def __init__(self, delay_seconds: float = 0.0, image_long_side: int = 512) -> None:
        self.delay_seconds = delay_seconds
        self.image_long_side = image_long_side

    def configured(self) -> bool:
        return True

    async def submit(self, job: ProviderJob) -> str:
        return f"local-{new_id()}"

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        start = time.perf_counter()
        outputs = [await asyncio.to_thread(self._render, job, i) for i in range(job.output_number)]
        return ProviderResult(outputs=outputs, predict_time=round(time.perf_counter() - start, 3))

    def _render(self, job: ProviderJob, index: int) -> ProviderOutput:
        seed = _seed(job, index)
        if job.model_type == "video":
            width, height = video_size(job.ratio, job.resolution or "480p")
            data = render_preview_video(
                job.prompt, seed, width, height, job.duration or 1, with_audio=bool(job.generate_audio)
            )
            return ProviderOutput(ext="mp4", content_type="video/mp4", data=data)
        width, height = image_size(job.ratio, self.image_long_side)
        data = render_preview_image(job.prompt, seed, width, height, job.output_format)
        return ProviderOutput(
            ext=job.output_format, content_type=_CONTENT_TYPES[job.output_format], data=data
        )

    async def cancel(self, prediction_id: str) -> bool:
        # Rendering stops when the worker cancels its task; nothing runs elsewhere.
        return True
