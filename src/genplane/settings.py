"""Runtime configuration.

Every setting is an environment variable with the ``GENPLANE_`` prefix (or a line in
a ``.env`` file) so one process image serves any deployment; the README lists them all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Region = Literal["us", "eu", "jp"]
REGIONS: tuple[Region, ...] = ("us", "eu", "jp")

#: Route groups, each with its own request rate per account (see ``rate_limits``).
RouteGroup = Literal["generate", "read", "library"]
#: The request patterns the anomaly detectors flag (see ``anomaly_auto_block``).
AnomalyPattern = Literal["id_enumeration", "polling_storm", "failed_create_burst"]
ANOMALY_PATTERNS: tuple[AnomalyPattern, ...] = ("id_enumeration", "polling_storm", "failed_create_burst")
#: The plan key of ``rate_limits`` and ``max_inflight_generations_by_plan`` that applies to
#: every plan, for whatever the plan's own entry leaves out.
ANY_PLAN = "*"

PositiveInt = Annotated[int, Field(ge=1)]

#: SigV4's limit on a presigned URL's life: 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: S3's bucket names (lower case; dots, hyphens and the legacy underscore).
S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def _listed(value: Any) -> list[str] | None:
    """A list setting given as a comma-separated string, a JSON list or a list; None for anything else."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.split(",")
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENPLANE_", env_file=".env", extra="ignore")

    region: Region = "us"
    public_domain: str = Field(
        "genplane.local", description="Hosts are api.<region>.<public_domain>; named in region errors."
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL clients use; output file URLs are built on it."
    )
    data_dir: Path = Field(Path("./data"), description="Embedded database and stored output files.")
    storage_url: str = Field(
        "",
        description="Where output files are stored: file:///absolute/path or s3://bucket[/prefix]. "
        "Empty: <data_dir>/files.",
    )
    storage_presign_seconds: int = Field(
        0,
        ge=0,
        le=MAX_PRESIGN_SECONDS,
        description="With S3 storage, GET /files/... redirects (307) to a presigned URL valid this long; "
        "0 serves every file through the app.",
    )
    s3_endpoint_url: str = Field(
        "",
        description="Endpoint of an S3-compatible service (MinIO, R2, moto); empty: AWS's own. "
        "An http:// endpoint is used without TLS.",
    )
    s3_region: str = Field(
        "", description="The bucket's region; empty: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1."
    )
    database_url: str = Field(
        "", description="SQLAlchemy async URL; empty means SQLite in <data_dir>/genplane.db."
    )
    database_pool_size: int = Field(
        10,
        ge=1,
        le=500,
        description="PostgreSQL connections one process holds at most (plus one that listens for "
        "other processes' notifications and, where jobs run, one that renews their leases). Size "
        "processes x (this + 2) below the server's max_connections; jobs and requests wait their "
        "turn for a connection.",
    )
    redis_url: str = Field(
        "",
        description="Redis shared by every process (redis://, rediss:// or unix://): rate-limit windows, "
        "firewall blocks and counters. Empty: each process keeps them in memory (one process only).",
    )
    redis_prefix: str = Field(
        "genplane:", description="Prefix of every key genplane writes in Redis, so deployments can share one."
    )
    error_shape: Literal["auto", "flat", "nested"] = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a connection has to send a complete request head, after connecting and after "
        "each response; then it is closed.",
    )
    keepalive_timeout_seconds: float = Field(
        5.0, gt=0, description="How long an idle keep-alive connection is kept open."
    )
    max_connections: int = Field(
        2048, ge=1, description="Client connections per process; a connection beyond it is closed at once."
    )
    fd_reserve: int = Field(
        256,
        ge=0,
        description="File descriptors kept free of connections, for the database, files and providers.",
    )

    run_worker: bool = Field(True, description="Run the generation worker inside `serve`.")
    worker_drain_seconds: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM, how long a worker lets running jobs finish before it stops the "
        "rest and hands them back to the other workers (they resume the provider's job).",
    )
    worker_concurrency: int | None = Field(
        None,
        ge=1,
        le=16384,
        description="Jobs one process runs at once. Unset: what the in-flight caps admit (the largest "
        "of max_inflight_generations and its per-plan values), at least 512 and at most 16384.",
    )
    gc_young_threshold: int = Field(
        10_000,
        ge=0,
        description="Objects the collector's young generation holds before a collection, set with "
        "`gc.freeze()` of start-up's objects once `serve` has started; 0 leaves Python's defaults. "
        "Python's 700 makes full collections stall a worker with thousands of jobs in flight.",
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="How long a claimed job stays owned without a heartbeat."
    )
    sweep_interval_seconds: float = Field(5.0, gt=0)
    max_job_claims: int = Field(3, ge=1, description="A job claimed this often without finishing is failed.")
    local_provider_delay_seconds: float = Field(
        0.0, ge=0, description="Artificial time the local provider spends per job (demos, tests)."
    )

    image_attempt_deadline_seconds: float = Field(
        60.0, gt=0, description="Per-provider deadline for image jobs."
    )
    video_attempt_deadline_seconds: float = Field(
        250.0, gt=0, description="Per-provider deadline for video jobs."
    )
    generation_deadline_seconds: float = Field(
        900.0, gt=0, description="Overall deadline of a generation's whole provider chain."
    )
    catalog_dir: Path | None = Field(
        None,
        description="Folder of extra catalogue *.yaml files; an identifier there replaces the packaged one.",
    )

    provider_poll_interval_seconds: float = Field(
        1.0, gt=0, description="How often a running provider job's status is checked."
    )
    provider_request_timeout_seconds: float = Field(
        60.0, gt=0, description="Timeout of one HTTP request to a provider (submit, poll, download)."
    )
    fetch_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts exempt from the public-address check on input and output files "
        "(development and tests only), e.g. [\"127.0.0.1\", \"localhost\"].",
    )
    max_input_file_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest input image accepted.")
    max_output_file_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest output file downloaded from a provider."
    )

    # Provider credentials and endpoints. A provider without its credentials is unavailable.
    replicate_api_token: SecretStr | None = None
    replicate_base_url: str = "https://api.replicate.com"
    fal_key: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run"
    bfl_api_key: SecretStr | None = None
    bfl_base_url: str = "https://api.bfl.ai"  # or a regional host: api.eu.bfl.ai, api.us.bfl.ai
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com"
    runway_api_key: SecretStr | None = None
    runway_base_url: str = "https://api.dev.runwayml.com"
    cloudflare_api_token: SecretStr | None = None
    cloudflare_account_id: str = ""
    cloudflare_base_url: str = "https://api.cloudflare.com/client/v4"
    alibabacloud_api_key: SecretStr | None = None
    alibabacloud_base_url: str = "https://dashscope-intl.aliyuncs.com"  # mainland: dashscope.aliyuncs.com
    byteplus_api_key: SecretStr | None = None
    byteplus_base_url: str = "https://ark.ap-southeast.bytepluses.com"
    google_api_key: SecretStr | None = None
    google_base_url: str = "https://generativelanguage.googleapis.com"
    selfhosted_base_url: str = ""  # the operator's own GPU server; empty means unavailable
    selfhosted_api_key: SecretStr | None = None
    selfhosted_protocol: Literal["openai", "comfyui"] = "openai"

    secret_key: SecretStr | None = Field(
        None,
        description="Key webhook signing secrets are derived from; every process of a deployment "
        "needs the same one. Unset: generated once into <data_dir>/secret.key.",
    )
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Webhook destinations exempt from the public-address rule (development, tests).",
    )
    webhook_retry_schedule_seconds: list[float] = Field(
        # About 34 h in all before the 15th failure: a receiver down for a day loses nothing.
        default_factory=lambda: [
            5.0, 30.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 14400.0,
            21600.0, 21600.0, 21600.0, 21600.0,
        ],
        description="Delay before each retry of a failed delivery (jittered; Retry-After is honoured).",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="How long one delivery may take.")
    webhook_max_consecutive_failures: int = Field(
        15, ge=1, description="Failed deliveries in a row after which an endpoint is disabled."
    )
    webhook_dead_letter_hours: float = Field(
        72.0, gt=0, description="How long delivered and dead-lettered deliveries are kept."
    )
    webhook_poll_interval_seconds: float = Field(
        0.25, gt=0, description="How often the dispatcher looks for deliveries that are due."
    )
    webhook_concurrency: int = Field(32, ge=1, le=1024, description="Deliveries sent at once per process.")

    request_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest time one API request may take, body upload included (file downloads "
        "excepted); then 408 bse_request_timeout while the body is still arriving, else 500 "
        "bse_internal_error; both retryable.",
    )
    prefer_wait_max_seconds: int = Field(
        60,
        ge=0,
        le=60,
        description="Longest wait a 'Prefer: wait=N' request is granted (also kept 2 s inside "
        "request_timeout_seconds); 0 never waits.",
    )
    prefer_wait_recheck_seconds: float = Field(
        5.0,
        gt=0,
        description="While a 'Prefer: wait' request waits, its generation's row is also read this often, "
        "for transitions committed by another process.",
    )
    rate_limit_per_minute: int = Field(
        600,
        ge=1,
        description="Requests per account per minute in each route group, unless rate_limits says else.",
    )
    rate_limits: dict[str, dict[RouteGroup, PositiveInt]] = Field(
        default_factory=dict,
        description="Per plan (or '*' for every plan), requests per account per minute by route group, "
        'e.g. {"standard": {"generate": 120, "read": 1200}}; groups left out use rate_limit_per_minute.',
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=1,
        description="Failed authentications per minute per client IP and presented key (none counts as one).",
    )
    auth_failures_per_ip_per_minute: int = Field(
        300,
        ge=1,
        description="Failed authentications per client IP per minute, all keys together; over it, requests "
        "whose key does not authenticate are refused without a 401, and keys that do are still served.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For names the client; "
        "comma-separated or a JSON list. Empty: the socket's peer is the client.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Origins whose browser pages may call /v1 (CORS), comma-separated or a JSON list; `*` "
        "(the default) admits any: keys travel in the Authorization header, never in cookies, so a page "
        "can only use a key its user gave it. Empty: no CORS headers, preflights refused.",
    )
    max_inflight_generations: int = Field(
        50, ge=1, description="Non-terminal generations per account, unless the plan has its own cap."
    )
    max_inflight_generations_by_plan: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="Per plan (or '*'), non-terminal generations per account, e.g. {\"standard\": 10}.",
    )
    idempotency_ttl_hours: int = Field(
        24, ge=1, description="How long a stored create answer is replayed; older records are purged."
    )
    attempt_retention_days: int = Field(
        30, ge=1, description="Provider attempts (routing, health, spend history) older than this are purged."
    )
    usage_retention_days: int = Field(
        400, ge=90, description="Daily request counters older than this are purged (/v1/usage reads 90 days)."
    )
    janitor_interval_seconds: float = Field(
        300.0, gt=0, description="How often a worker purges history past its retention."
    )
    janitor_batch_rows: int = Field(
        2000, ge=1, description="Rows one purge statement deletes; each batch is its own short transaction."
    )
    idempotency_stale_seconds: float = Field(
        120.0, gt=0, description="An unfinished idempotency claim older than this is abandoned."
    )
    key_touch_interval_seconds: float = Field(
        60.0, ge=0, description="apikey_last_used_at is written at most this often per key."
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="How long a verified key is remembered; 0 reads it on every request."
    )
    usage_flush_interval_seconds: float = Field(
        1.0, gt=0, description="How often request counters and anomaly flags are written to the database."
    )
    log_level: str = "INFO"
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token GET /metrics (Prometheus text) requires; unset: /metrics is off (404).",
    )

    firewall_enabled: bool = Field(
        True,
        description="Check every request against the published OpenAPI document before routing. "
        "Turn off only to measure its cost.",
    )
    firewall_max_rejections: int = Field(
        100, ge=1, description="Rejected requests a key (or an unauthenticated IP) may send per window."
    )
    firewall_window_seconds: float = Field(
        60.0, gt=0, description="Sliding window the firewall counts rejections in."
    )
    firewall_block_seconds: float = Field(
        300.0, gt=0, description="How long a key or IP over the rejection threshold is blocked."
    )
    firewall_max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest header section (all names and values) accepted."
    )
    firewall_max_header_line_bytes: int = Field(
        8 * 1024, ge=256, description="Largest single header (name and value) accepted."
    )
    firewall_max_url_bytes: int = Field(
        4096, ge=256, description="Longest path plus query string accepted."
    )
    firewall_max_json_depth: int = Field(
        32, ge=2, le=512, description="Deepest nesting of arrays and objects accepted in a JSON body."
    )

    anomaly_detection_enabled: bool = Field(
        True, description="Keep each key's recent request sequence and flag abusive patterns in it."
    )
    anomaly_history_size: int = Field(
        256, ge=16, le=4096, description="Requests remembered per key (a ring buffer) for the detectors."
    )
    anomaly_enumeration_threshold: int = Field(
        20, ge=2, description="404s on /v1/content/{id} within the window that flag id enumeration."
    )
    anomaly_enumeration_window_seconds: float = Field(60.0, gt=0)
    anomaly_polling_threshold: int = Field(
        40, ge=2, description="GETs of one generation within the window that flag a polling storm."
    )
    anomaly_content_reads_threshold: int = Field(
        200, ge=2, description="GETs on /v1/content (any id, or the list) within the polling window "
        "that flag a polling storm."
    )
    anomaly_polling_window_seconds: float = Field(10.0, gt=0)
    anomaly_failed_create_threshold: int = Field(
        20,
        ge=2,
        description="Creates refused with a 4xx other than 429 within the window: a failed-create burst.",
    )
    anomaly_failed_create_window_seconds: float = Field(60.0, gt=0)
    anomaly_share_interval_seconds: float = Field(
        0.5,
        gt=0,
        description="With Redis: how often each API process adds its detector counts to the shared "
        "windows and reads the others' back (how late a storm spread over processes is found).",
    )
    anomaly_auto_block: Annotated[list[AnomalyPattern], NoDecode] = Field(
        default_factory=list,
        description="Patterns that block the offending key for firewall_block_seconds: a comma-separated "
        "or JSON list of id_enumeration, polling_storm, failed_create_burst, or 'all'; empty blocks nothing.",
    )

    @field_validator(
        "replicate_api_token", "fal_key", "bfl_api_key", "openai_api_key", "runway_api_key",
        "cloudflare_api_token", "alibabacloud_api_key", "byteplus_api_key", "google_api_key",
        "selfhosted_api_key", "metrics_token", mode="before",
    )
    @classmethod
    def _blank_credential_is_none(cls, value: Any) -> Any:
        """A key of blanks (a stray space in an env file) means no key, so the provider reads as
        unconfigured instead of failing every call with 401; surrounding blanks are never part of a key."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_cors_origins(cls, value: Any) -> Any:
        """A comma-separated list or a JSON list; each entry ``*`` or ``scheme://host[:port]``."""
        entries = _listed(value)
        if entries is None:
            return value
        for entry in entries:
            if entry != "*" and not re.fullmatch(r"https?://[^/\s]+", entry):
                raise ValueError(f"cors_origins: {entry!r} is not * or an origin such as https://app.example.com")
        return entries

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_trusted_proxies(cls, value: Any) -> Any:
        """A comma-separated list or a JSON list; each entry an IP address or a network."""
        entries = _listed(value)
        if entries is None:
            return value
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or network") from exc
        return entries

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        """Refused at load, not at the first output: a typo would otherwise fail every job."""
        text = value.strip()
        if not text:
            return ""
        url = urlsplit(text)
        if url.query or url.fragment:
            raise ValueError(f"storage_url: {text!r} may not have a query or fragment")
        if url.scheme == "file":
            if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
                raise ValueError(f"storage_url: {text!r} is not file:///absolute/path")
            return text
        if url.scheme == "s3":
            if not S3_BUCKET.fullmatch(url.netloc):
                raise ValueError(
                    f"storage_url: {url.netloc!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-', '_'); "
                    "write s3://bucket[/prefix]"
                )
            prefix = url.path.strip("/")
            if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
                raise ValueError(f"storage_url: the prefix {prefix!r} has an empty, '.' or '..' segment")
            return f"s3://{url.netloc}/{prefix}" if prefix else f"s3://{url.netloc}"
        raise ValueError(f"storage_url: {text!r} is neither file:///absolute/path nor s3://bucket[/prefix]")

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_s3_endpoint(cls, value: str) -> str:
        """Credentials belong in AWS_* variables: an endpoint carrying them would be logged."""
        text = value.strip().rstrip("/")
        if not text:
            return ""
        url = urlsplit(text)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"s3_endpoint_url: {text!r} is not an http:// or https:// URL")
        if url.username is not None or url.password is not None or url.query or url.fragment:
            raise ValueError("s3_endpoint_url: give only scheme, host, port and path (no credentials)")
        return text

    @field_validator("anomaly_auto_block", mode="before")
    @classmethod
    def _parse_auto_block(cls, value: Any) -> Any:
        """'all', 'true', 'none', a comma-separated list or a JSON list."""
        if isinstance(value, bool):
            return list(ANOMALY_PATTERNS) if value else []
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            names = [str(v).strip().lower() for v in value]
            if any(n in ("all", "true", "1", "yes") for n in names):
                return list(ANOMALY_PATTERNS)
            return [n for n in names if n not in ("none", "false", "0", "no")]
        return value

    @model_validator(mode="after")
    def _thresholds_fit_the_history(self) -> Self:
        for name in (
            "anomaly_enumeration_threshold",
            "anomaly_polling_threshold",
            "anomaly_content_reads_threshold",
            "anomaly_failed_create_threshold",
        ):
            if getattr(self, name) > self.anomaly_history_size:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) is larger than anomaly_history_size "
                    f"({self.anomaly_history_size}): it could never be reached"
                )
        return self

    def rate_limit_for(self, plan: str, group: RouteGroup) -> int:
        """Requests per minute an account of ``plan`` may send to ``group``."""
        for key in (plan, ANY_PLAN):
            limits = self.rate_limits.get(key)
            if limits is not None and group in limits:
                return limits[group]
        return self.rate_limit_per_minute

    def max_inflight_for(self, plan: str) -> int:
        """Non-terminal generations an account of ``plan`` may have at once."""
        for key in (plan, ANY_PLAN):
            cap = self.max_inflight_generations_by_plan.get(key)
            if cap is not None:
                return cap
        return self.max_inflight_generations

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'genplane.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        """Where output files live when storage_url is empty."""
        return self.data_dir / "files"

    @property
    def resolved_s3_region(self) -> str:
        """The AWS tools' own variables apply when genplane's is unset."""
        env = os.environ
        return self.s3_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"

    def host_for_region(self, region: str) -> str:
        return f"api.{region}.{self.public_domain}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
