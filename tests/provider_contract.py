"""The adapter contract every provider meets, and the rig its tests run on.

One :class:`ProviderCase` per adapter and protocol path (a provider whose synchronous
calls and polled jobs behave apart has one of each): its settings, its fake, a typical
job, and the fake's switch for each failure the contract covers, None where the provider
has no such behaviour. ``tests/test_provider_contract.py`` writes each behaviour once
over every case; ``tests/test_provider_<name>.py`` keep only the protocol's quirks, on
the same :class:`Rig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import httpx
import pytest
from PIL import Image

from genplane.providers.alibabacloud import AlibabaCloudAdapter
from genplane.providers.base import InputImage, ProviderAdapter, ProviderError, ProviderJob, ProviderResult
from genplane.providers.bfl import BflAdapter
from genplane.providers.byteplus import BytePlusAdapter
from genplane.providers.cloudflare import CloudflareAdapter
from genplane.providers.fal import FalAdapter
from genplane.providers.google import GoogleAdapter
from genplane.providers.openai import OpenAIAdapter
from genplane.providers.registry import build_http_client
from genplane.providers.replicate import ReplicateAdapter
from genplane.providers.runway import RunwayAdapter
from genplane.providers.selfhosted import SelfHostedAdapter
from genplane.settings import Settings
from tests.fakes import (
    alibabacloud,
    bfl,
    byteplus,
    cloudflare,
    fal,
    google,
    openai,
    replicate,
    runway,
    selfhosted,
)
from tests.fakes.media import png_bytes
from tests.fakes.network import FakeNetwork

F = TypeVar("F")
T = TypeVar("T")
A = TypeVar("A", bound=ProviderAdapter)

# Fast polls and short timeouts: a hung call costs a test a fraction of a second.
TIMING: dict[str, Any] = {
    "provider_poll_interval_seconds": 0.01,
    "provider_request_timeout_seconds": 0.3,
    "image_attempt_deadline_seconds": 0.5,  # the timeout of one synchronous image call
}
# Bounds, not measurements: a call the adapter times out (at 0.5 s at most) ends well before
# ATTEMPT_BOUND; a regression that polls forever fails at RUN_BOUND instead of hanging.
ATTEMPT_BOUND = 2.0
RUN_BOUND = 10.0


def put(fake: Any, **values: Any) -> None:
    """Set the fake's switches; a dotted name reaches into a part (``files.ttl_seconds``)."""
    for name, value in values.items():
        owner, _, attribute = name.rpartition(".")
        setattr(getattr(fake, owner) if owner else fake, attribute, value)


def switch(**values: Any) -> Callable[[Any], None]:
    return lambda fake: put(fake, **values)


def arrange(result: T, **values: Any) -> Callable[[Any], T]:
    """A switch that also returns what the test should then see (words of a message, a count)."""

    def flip(fake: Any) -> T:
        put(fake, **values)
        return result

    return flip


def failing(*words: str, **values: Any) -> Callable[[Any], tuple[str, ...]]:
    """A switch whose failure's message carries ``words``."""
    return arrange(words, **values)


def rate_limited(counter: str) -> Callable[[Any, int], None]:
    """The fake's switch for one 429 with a Retry-After of the given seconds."""
    return lambda fake, seconds: put(fake, **{counter: 1, "retry_after": str(seconds)})


def job_builder(**defaults: Any) -> Callable[..., ProviderJob]:
    """Jobs from ``defaults`` (over one 16:9 image), each call overriding what it names."""
    base = {"generation_id": "gen_1", "model_type": "image", "ratio": "16:9", "output_number": 1}
    return lambda **over: ProviderJob(**{**base, **defaults, **over})


VIDEO: dict[str, Any] = {"model_type": "video", "output_format": "mp4"}


def pil_format(data: bytes | None) -> str:
    """What the bytes are (PNG, JPEG...), whatever the adapter called them."""
    assert data is not None
    with Image.open(io.BytesIO(data)) as image:
        return str(image.format)


def picture(url: str = "https://example.com/a.png", color: tuple[int, int, int] = (1, 2, 3)) -> InputImage:
    return InputImage(url, png_bytes(color=color), "image/png")


# The names most fakes give these switches: a case's defaults.
HANG_SUBMIT = switch(hang_submit=True)
RATE_LIMIT_SUBMIT = rate_limited("rate_limit_submit")
FAIL_SUBMIT = switch(fail_submit=1)


@dataclass(frozen=True, kw_only=True)
class ProviderCase(Generic[F, A]):
    name: str
    adapter: Callable[[Settings, httpx.AsyncClient], A]
    fake: Callable[[], F]
    credential: tuple[str, str]  # the secret's setting and value; a wrong one gets ``wrong_key_status``
    settings_values: dict[str, Any]  # endpoints and the like, on top of TIMING
    wrong_key_status: int = 401
    required: tuple[str, ...] = ()  # without any of these configured() is False; default: the key
    job: Callable[..., ProviderJob]  # a typical job; the polled kind where the provider polls
    polls: Callable[[F], int] | None = None  # the fake's poll count; None: answered synchronously
    lifecycle: tuple[str, str] = ("queued_polls", "running_polls")  # the fake's counters of both
    # The fake's switches for each failure (None: the provider has no such behaviour).
    make_submit_hang: Callable[[F], None] = HANG_SUBMIT
    make_rate_limited: Callable[[F, int], None] = RATE_LIMIT_SUBMIT  # one 429 with this Retry-After
    make_server_error: Callable[[F], None] = FAIL_SUBMIT  # one 500
    make_malformed: Callable[[F], None] | None = None  # the submit's answer is garbled JSON
    make_out_of_credits: Callable[[F], None] | None = None
    credits_status: int | None = None
    make_refusal: Callable[[F], tuple[str, ...]] | None = None  # moderation refuses prompt or output
    refusal_status: int | None = None  # the HTTP status it comes with (None: in a task status)
    make_task_failure: Callable[[F], tuple[str, ...]] | None = None  # the model fails upstream
    make_poll_hang: Callable[[F], None] | None = None  # every poll from now on hangs
    make_bad_polls: Callable[[F], int] | None = None  # the next polls answer badly; returns how many
    make_outputs_expire: Callable[[F], None] | None = None  # output URLs are expired when given
    cancels: Callable[[F], list[str]] | None = None  # ids the fake was asked to cancel
    cancel_sends_nothing: bool = True  # without ``cancels``: the API has no cancel at all
    cancel_refused_once_running: bool = False  # only a task still queued can be canceled

    @property
    def key_setting(self) -> str:
        return self.credential[0]

    @property
    def key(self) -> str:
        return self.credential[1]

    @property
    def required_settings(self) -> tuple[str, ...]:
        return self.required or (self.key_setting,)

    def settings(self, **overrides: Any) -> Settings:
        return Settings(**{**TIMING, self.key_setting: self.key, **self.settings_values, **overrides})

    def synchronous(self, **changes: Any) -> ProviderCase[F, A]:
        """This provider's synchronous path: held in memory between submit and wait."""
        polled_only = {"polls": None, "make_task_failure": None, "make_poll_hang": None,
                       "make_bad_polls": None, "cancels": None, "cancel_sends_nothing": True,
                       "cancel_refused_once_running": False}
        return replace(self, **{**polled_only, **changes})


@dataclass
class Rig(Generic[F, A]):
    """A case's fake on a fake network, and the client adapters reach it through."""

    case: ProviderCase[F, A]
    fake: F
    network: FakeNetwork
    client: httpx.AsyncClient

    def adapter(self, **overrides: Any) -> A:
        """A new adapter, as a new process builds it: nothing shared but the fake."""
        return self.case.adapter(self.case.settings(**overrides), self.client)

    async def run(self, job: ProviderJob, adapter: A | None = None) -> ProviderResult:
        adapter = adapter or self.adapter()
        async with asyncio.timeout(RUN_BOUND):
            return await adapter.wait(job, await adapter.submit(job))

    async def fails(self, job: ProviderJob, adapter: A | None = None) -> ProviderError:
        return await raises(self.run(job, adapter))


async def raises(awaitable: Awaitable[object]) -> ProviderError:
    """The ProviderError it ends with; a regression that hangs fails at RUN_BOUND instead."""
    with pytest.raises(ProviderError) as caught:
        async with asyncio.timeout(RUN_BOUND):
            await awaitable
    return caught.value


@contextlib.asynccontextmanager
async def open_rig(case: ProviderCase[F, A]) -> AsyncIterator[Rig[F, A]]:
    fake = case.fake()
    network = FakeNetwork()
    mounted: Any = fake
    (getattr(mounted, "install", None) or mounted.mount)(network)
    async with build_http_client(case.settings(), network) as client:
        yield Rig(case, fake, network, client)


def rig_fixture(case: ProviderCase[F, A]) -> Any:
    """The ``rig`` fixture of a provider's own tests: ``rig = rig_fixture(CASE)``."""

    @pytest.fixture(name="rig")
    async def fixture() -> AsyncIterator[Rig[F, A]]:
        async with open_rig(case) as rig:
            yield rig

    return fixture


# -- the cases ----------------------------------------------------------------------------
# Switches that go together share a line: the submit's, the polls', the job's end.

REPLICATE = ProviderCase[replicate.FakeReplicate, ReplicateAdapter](
    name="replicate", adapter=ReplicateAdapter, fake=lambda: replicate.FakeReplicate(token="r8_fake_token"),
    credential=("replicate_api_token", "r8_fake_token"),
    settings_values={"replicate_base_url": f"https://{replicate.API_HOST}"},
    job=job_builder(model_identifier="bfl/flux-schnell", native_model_id="black-forest-labs/flux-schnell",
                    prompt="a red fox in snow", output_format="png", output_number=2,
                    specific={"generation_seed": 7, "generation_negative_prompt": "blurry"}),
    polls=lambda fake: fake.polls,
    make_submit_hang=switch(hang_submits=1), make_server_error=switch(submit_error_status=500),
    make_rate_limited=rate_limited("rate_limited_submits"), make_malformed=switch(malformed_submits=1),
    make_out_of_credits=switch(submit_error_status=402), credits_status=402,
    make_refusal=failing(moderate=True),
    make_task_failure=failing("CUDA out of memory", fail_error="CUDA out of memory (E1001)"),
    make_poll_hang=switch(hang_polls=10**6), make_bad_polls=arrange(4, hang_polls=2, malformed_polls=2),
    make_outputs_expire=switch(**{"files.ttl_seconds": -1.0}), cancels=lambda fake: fake.canceled,
)

FAL = ProviderCase[fal.FakeFal, FalAdapter](
    name="fal", adapter=FalAdapter, fake=lambda: fal.FakeFal(key="fal-key-id:fal-key-secret"),
    credential=("fal_key", "fal-key-id:fal-key-secret"), settings_values={"fal_queue_url": f"https://{fal.QUEUE_HOST}"},
    job=job_builder(model_identifier="bfl/flux-schnell", native_model_id="fal-ai/flux/schnell",
                    prompt="a lighthouse at dusk", output_format="jpg", output_number=2,
                    specific={"generation_seed": 11, "generation_negative_prompt": "text"}),
    polls=lambda fake: len(fake.status_paths),
    make_submit_hang=switch(hang_submits=1), make_server_error=switch(submit_error_status=500),
    make_rate_limited=rate_limited("rate_limited_submits"), make_malformed=switch(malformed_submits=1),
    make_out_of_credits=switch(out_of_balance=True), credits_status=403,
    make_refusal=failing(moderate=True), refusal_status=422,
    make_task_failure=failing("illegal memory access",
                              fail_error="CUDA error: an illegal memory access was encountered"),
    make_poll_hang=switch(hang_polls=10**6), make_bad_polls=arrange(4, hang_polls=2, malformed_polls=2),
    make_outputs_expire=switch(**{"files.ttl_seconds": -1.0}), cancels=lambda fake: fake.canceled,
)

BFL = ProviderCase[bfl.FakeBfl, BflAdapter](
    name="bfl", adapter=BflAdapter, fake=bfl.FakeBfl,
    credential=("bfl_api_key", "bfl-test-key"), settings_values={"bfl_base_url": "https://api.bfl.test"},
    wrong_key_status=403,
    job=job_builder(model_identifier="bfl/flux-1.1-pro", native_model_id="flux-pro-1.1",
                    prompt="a red fox in the snow", output_format="jpg"),
    polls=lambda fake: len(fake.polls), lifecycle=("pending_polls", "running_polls"),
    make_out_of_credits=switch(out_of_credits=True), credits_status=402,
    make_refusal=failing(moderate_submit=True), refusal_status=400,
    make_task_failure=failing("generation crashed", outcome="Error"),
    make_poll_hang=switch(hang_poll=True), make_bad_polls=arrange(3, malformed_polls=2, poll_errors=1),
    make_outputs_expire=switch(**{"files.ttl_seconds": -1.0}),
)


def _openai_fake() -> openai.FakeOpenAI:
    openai.video_bytes()  # render the fake's MP4 once, outside any request's timeout
    # The adapter's protocol tests drive ids OpenAI has since shut down (DALL-E, gpt-image-1,
    # Sora): the fake serves them here only; elsewhere it refuses them as OpenAI does now.
    return openai.FakeOpenAI(served_models=openai.SERVED_MODELS | openai.ARCHIVED_MODELS)


OPENAI = ProviderCase[openai.FakeOpenAI, OpenAIAdapter](
    name="openai", adapter=OpenAIAdapter, fake=_openai_fake,
    credential=("openai_api_key", "sk-test-key"), settings_values={"openai_base_url": "https://api.openai.test"},
    job=job_builder(model_identifier="openai/sora-2", native_model_id="sora-2", prompt="a lighthouse at dusk",
                    duration=8, resolution="720p", **VIDEO),
    polls=lambda fake: fake.polls, lifecycle=("pending_polls", "running_polls"),
    make_malformed=switch(malformed_submit=True),
    make_out_of_credits=switch(insufficient_quota=True), credits_status=429,
    make_refusal=failing("blocked by moderation", video_outcome="moderated"),
    make_task_failure=failing("failed", video_outcome="failed"),
    make_poll_hang=switch(hang_poll=True),
    make_bad_polls=arrange(2, malformed_polls=2, content_errors=1),  # and one failed download
    cancel_sends_nothing=False,  # DELETE of a running video is refused: tests/test_provider_openai.py
)
OPENAI_IMAGES = OPENAI.synchronous(
    name="openai-images",
    job=job_builder(model_identifier="openai/gpt-image-1", native_model_id="gpt-image-1",
                    prompt="a lighthouse at dusk", output_format="jpg"),
    make_refusal=failing(moderate_submit=True), refusal_status=400,
)

RUNWAY = ProviderCase[runway.FakeRunway, RunwayAdapter](
    name="runway", adapter=RunwayAdapter, fake=runway.FakeRunway,
    credential=("runway_api_key", "key_runway_test"), settings_values={"runway_base_url": f"https://{runway.HOST}"},
    job=job_builder(model_identifier="runway/gen4-turbo", native_model_id="gen4_turbo",
                    prompt="the fox starts running", duration=5, resolution="720p", inputs=[picture()],
                    **VIDEO),
    polls=lambda fake: len(fake.polls),
    make_out_of_credits=switch(out_of_credits=True), credits_status=400,
    make_refusal=failing(failure_code="SAFETY.INPUT.TEXT"),
    make_task_failure=failing("INTERNAL", failure_code="INTERNAL"),
    make_poll_hang=switch(hang_poll=True), make_bad_polls=arrange(3, malformed_polls=2, poll_errors=1),
    make_outputs_expire=switch(**{"files.ttl_seconds": -1.0}), cancels=lambda fake: fake.cancels,
)

CLOUDFLARE = ProviderCase[cloudflare.FakeCloudflare, CloudflareAdapter](
    name="cloudflare", adapter=CloudflareAdapter, fake=cloudflare.FakeCloudflare,
    credential=("cloudflare_api_token", "cf-test-token"),
    settings_values={"cloudflare_account_id": "acc0123456789", "cloudflare_base_url": cloudflare.BASE_URL},
    required=("cloudflare_api_token", "cloudflare_account_id"),
    job=job_builder(model_identifier="cloudflare/flux-schnell",
                    native_model_id="@cf/black-forest-labs/flux-1-schnell",
                    prompt="a red fox in the snow", output_format="jpg"),
    make_submit_hang=switch(hang=True), make_server_error=switch(fail=1),
    make_rate_limited=rate_limited("rate_limit"), make_malformed=switch(malformed=True),
    make_out_of_credits=switch(out_of_neurons=True), credits_status=429,
    make_refusal=failing("NSFW", nsfw=True), refusal_status=400,
)

# The DashScope and Ark fakes name these switches alike (their cancels too).
TASK_API_SWITCHES: dict[str, Any] = {
    "make_rate_limited": rate_limited("rate_limit"), "make_malformed": switch(malformed="submit"),
    "make_poll_hang": switch(hang_polls=10**6), "make_outputs_expire": switch(output_ttl=-1.0),
    "cancels": lambda fake: fake.cancel_calls, "cancel_refused_once_running": True,
}

ALIBABACLOUD = ProviderCase[alibabacloud.FakeDashScope, AlibabaCloudAdapter](
    name="alibabacloud", adapter=AlibabaCloudAdapter,
    fake=lambda: alibabacloud.FakeDashScope(api_key="sk-test-key"),
    credential=("alibabacloud_api_key", "sk-test-key"),
    settings_values={"alibabacloud_base_url": f"https://{alibabacloud.HOST}"},
    job=job_builder(generation_id="gen_vid", model_identifier="alibaba/wan-2.5",
                    native_model_id="wan2.5-t2v-preview", prompt="a paper boat on a river", duration=10,
                    resolution="1080p", **VIDEO),
    polls=lambda fake: len(fake.polls()),
    make_out_of_credits=switch(arrearage=True), credits_status=400,
    make_refusal=failing("DataInspectionFailed", moderation="output"),  # a failed task; input: qwen's
    make_task_failure=failing("InternalError.Algo", task_error="InternalError.Algo"),
    make_bad_polls=arrange(3, rate_limit=1, malformed="poll", hang_polls=1),
    **TASK_API_SWITCHES,
)
ALIBABACLOUD_QWEN = ALIBABACLOUD.synchronous(
    name="alibabacloud-qwen",
    job=job_builder(generation_id="gen_img", model_identifier="alibaba/qwen-image",
                    native_model_id="qwen-image-plus", prompt="a lantern festival", output_format="png"),
    make_refusal=failing("DataInspectionFailed", moderation="input"), refusal_status=400,
)

BYTEPLUS = ProviderCase[byteplus.FakeBytePlus, BytePlusAdapter](
    name="byteplus", adapter=BytePlusAdapter, fake=lambda: byteplus.FakeBytePlus(api_key="ark-test-key"),
    credential=("byteplus_api_key", "ark-test-key"), settings_values={"byteplus_base_url": f"https://{byteplus.HOST}"},
    job=job_builder(generation_id="gen_vid", model_identifier="bytedance/seedance-1-pro",
                    native_model_id="seedance-1-0-pro-250528", prompt="waves at dusk", duration=5,
                    resolution="1080p", **VIDEO),
    polls=lambda fake: len([c for c in fake.calls if c.method == "GET"]),
    make_out_of_credits=switch(account_overdue=True), credits_status=403,
    make_refusal=failing("OutputVideoSensitiveContentDetected", moderation="output"),  # input: seedream's
    make_task_failure=failing("InternalServiceError", task_error="InternalServiceError"),
    make_bad_polls=arrange(4, rate_limit=2, retry_after="0", malformed="poll", hang_polls=1),
    **TASK_API_SWITCHES,
)
BYTEPLUS_SEEDREAM = BYTEPLUS.synchronous(
    name="byteplus-seedream",
    job=job_builder(generation_id="gen_img", model_identifier="bytedance/seedream-4",
                    native_model_id="seedream-4-0-250828", prompt="a red fox in snow", output_format="jpg"),
    make_refusal=failing("InputTextSensitiveContentDetected", moderation="input"), refusal_status=400,
)


def _google_fake() -> google.FakeGoogle:
    google.video_bytes()  # render the fake's MP4 once, outside any request's timeout
    # As for OpenAI: protocol tests of Imagen, Gemini 2.5 image and Veo 3.0, ids since shut down.
    return google.FakeGoogle(served_models=google.SERVED_MODELS | google.ARCHIVED_MODELS)


GOOGLE = ProviderCase[google.FakeGoogle, GoogleAdapter](
    name="google", adapter=GoogleAdapter, fake=_google_fake,
    credential=("google_api_key", "AIza-test-key"),
    settings_values={"google_base_url": "https://generativelanguage.googleapis.test"},
    wrong_key_status=400,  # the Gemini API's INVALID_ARGUMENT with API_KEY_INVALID
    job=job_builder(model_identifier="google/veo-3", native_model_id="veo-3.0-generate-001",
                    prompt="a lighthouse at dusk", duration=8, resolution="1080p", **VIDEO),
    polls=lambda fake: fake.polls, lifecycle=("pending_polls", "running_polls"),
    make_rate_limited=lambda fake, seconds: put(fake, rate_limit_submit=1, retry_delay=f"{seconds}s"),
    make_malformed=switch(malformed_submit=True),
    make_out_of_credits=switch(billing_required=True), credits_status=400,
    make_refusal=failing("person generation", video_outcome="filtered"),
    make_task_failure=failing("internal error", video_outcome="failed"),
    make_poll_hang=switch(hang_poll=True), make_bad_polls=arrange(2, malformed_polls=2),
)
GOOGLE_IMAGEN = GOOGLE.synchronous(
    name="google-imagen",
    job=job_builder(model_identifier="google/imagen-4", native_model_id="imagen-4.0-generate-001",
                    prompt="a lighthouse at dusk", output_format="jpg"),
    make_refusal=failing(moderate_prompt=True),
)

SELFHOSTED = ProviderCase[selfhosted.FakeSelfHosted, SelfHostedAdapter](
    name="selfhosted", adapter=SelfHostedAdapter,
    fake=lambda: selfhosted.FakeSelfHosted(key="box-key"),  # the key of the operator's reverse proxy
    credential=("selfhosted_api_key", "box-key"),
    settings_values={"selfhosted_protocol": "comfyui", "selfhosted_base_url": "http://gpu.selfhosted.test"},
    required=("selfhosted_base_url",),  # the key is optional: not every box sits behind a proxy
    job=job_builder(model_identifier="selfhosted/sdxl", native_model_id="sdxl", prompt="a lighthouse at dusk",
                    output_format="png"),
    polls=lambda fake: fake.history_polls, lifecycle=("pending_polls", "running_polls"),
    make_malformed=switch(malformed_submit=True),
    make_task_failure=failing("KSampler", "OutOfMemoryError", outcome="error"),
    make_poll_hang=switch(hang_poll=True), make_bad_polls=arrange(2, malformed_polls=2),
    cancels=lambda fake: [*(i for d in fake.deletes for i in d), *(i["prompt_id"] for i in fake.interrupts)],
)
SELFHOSTED_OPENAI = SELFHOSTED.synchronous(
    name="selfhosted-openai",
    settings_values={**SELFHOSTED.settings_values, "selfhosted_protocol": "openai"},
    make_refusal=failing(moderate_submit=True), refusal_status=400,
)

CASES: list[ProviderCase[Any, Any]] = [
    REPLICATE, FAL, BFL, OPENAI, OPENAI_IMAGES, RUNWAY, CLOUDFLARE, ALIBABACLOUD, ALIBABACLOUD_QWEN,
    BYTEPLUS, BYTEPLUS_SEEDREAM, GOOGLE, GOOGLE_IMAGEN, SELFHOSTED, SELFHOSTED_OPENAI,
]
