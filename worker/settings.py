"""Settings from environment variables (prefix ``TRACE_WORKER_``) or a ``.env`` file.

One flat model so that the variable names stay short and documented (``TRACE_WORKER_REDIS_URL``,
``TRACE_WORKER_FLIGHTSQL_URL``, ...); fields are grouped by name prefix, one group per part. The
full table is in docs/CONFIGURATION.md; a test checks that table against this model.

Only ``TRACE_WORKER_*`` names are read, from the environment and from ``.env`` (other keys of a
shared ``.env`` are none of our business). Commands load settings with :func:`load_settings`, which
reports a misspelt ``TRACE_WORKER_*`` name and every invalid value by variable name, in one style.
"""

from __future__ import annotations

import difflib
import inspect
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.keys import DEFAULT_PREFIX

__all__ = [
    "ENV_PREFIX",
    "OTHER_NAMES",
    "Settings",
    "SettingsError",
    "get_settings",
    "load_settings",
    "redis_url_problem",
]

ENV_PREFIX = "TRACE_WORKER_"
#: TRACE_WORKER_* names that are not settings: read by tools (devserver token, scripts/dev's venv,
#: the tests' redis-server binary, the compose file's image). Never reported as misspelt.
OTHER_NAMES = frozenset(
    {
        "TRACE_WORKER_DEVSERVER_TOKEN",
        "TRACE_WORKER_VENV",
        "TRACE_WORKER_TEST_REDIS_SERVER",
        "TRACE_WORKER_IMAGE",
    }
)

_PREFIX_RE = r"^[A-Za-z0-9._-]{1,64}$"


class Settings(BaseSettings):
    """Every setting of the worker and its command line."""

    # dotenv_filtering: a .env key that is not one of our variables is ignored, not an error.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="forbid", dotenv_filtering="only_existing"
    )

    # -- Redis
    #: Redis URL (redis://, rediss:// for TLS; a password goes in the URL or TRACE_WORKER_REDIS_PASSWORD).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    #: Redis ACL user name (Redis 6+), when it is not in the URL; used with TRACE_WORKER_REDIS_PASSWORD.
    redis_username: str | None = Field(None, min_length=1, pattern=r"^[^\s]+$")
    #: TRACE_WORKER_REDIS_URL names one node of a Redis Cluster (the others are discovered).
    redis_cluster: bool = False
    #: Prefix of every key and stream the worker touches.
    key_prefix: str = Field(DEFAULT_PREFIX, pattern=_PREFIX_RE)

    # -- Flight SQL (Micromegas)
    flightsql_url: str = "grpc://127.0.0.1:50051"
    #: Bearer token sent as ``authorization`` on every call (never logged); printable ASCII.
    flightsql_token: SecretStr | None = None
    #: PEM file with the CA that signs the server's certificate (grpc+tls://), checked at start to
    #: hold a certificate; default: system roots.
    flightsql_tls_ca: str | None = None
    flightsql_tls_skip_verify: bool = False
    #: Ask the server to keep dictionary-encoded string columns (less data on the wire).
    flightsql_preserve_dictionary: bool = True
    #: How many threads' spans are fetched at once.
    flightsql_concurrency: int = Field(4, ge=1, le=64)
    #: Longest wait for the service's next answer (query plan or record batch); then the read
    #: fails as retryable source_broken. 0: wait as long as the job may run.
    flightsql_batch_timeout_s: float = Field(300.0, ge=0)
    #: Most threads one trace may cover; a longer thread list fails the job trace_too_large.
    flightsql_max_threads: int = Field(10_000, ge=1, le=1_000_000)
    #: Skip GetFlightInfo and send DoGet with the statement as ticket (what Micromegas answers and
    #: its own Python client does): auto (once the server's first answer shows that its ticket is
    #: the statement), on (always), off (GetFlightInfo before every DoGet).
    flightsql_direct_tickets: Literal["auto", "on", "off"] = "auto"
    #: Read every thread's spans with one process_spans query when the thread list says the threads
    #: hold at most this many objects in all (Micromegas blocks.nb_objects); larger processes get
    #: one query per thread. 0: always one query per thread.
    flightsql_process_spans_max_objects: int = Field(50_000, ge=0)

    # -- Blob store
    #: Where finished traces go: file:///abs/dir (default ./traces) or s3://bucket/prefix.
    blob_url: str = "file://./traces"
    #: S3-compatible endpoint (e.g. http://127.0.0.1:9000); default: AWS for the region.
    blob_s3_endpoint: str | None = None
    blob_s3_region: str = "us-east-1"
    #: S3 credentials; when unset, the usual AWS_* environment variables / instance role apply.
    blob_s3_access_key_id: SecretStr | None = None
    blob_s3_secret_access_key: SecretStr | None = None
    #: Allow a plain-http endpoint (local S3-compatible servers).
    blob_s3_allow_http: bool = False
    #: Lifetime of the fetchable `url` in succeeded status entries (S3 presigned URLs).
    blob_url_expires_s: int = Field(24 * 3600, ge=60, le=7 * 24 * 3600)
    #: How blobs are stored when a request has no `compress`: none, or gzip (<job>.pftrace.gz).
    blob_compress: Literal["none", "gzip"] = "none"
    #: zlib level of gzip blobs (1 fastest .. 9 smallest; bench/bench_bytes.py measures them).
    blob_compress_level: int = Field(1, ge=1, le=9)

    # -- Service (trace-worker run)
    #: Jobs one worker process runs at once.
    worker_concurrency: int = Field(4, ge=1, le=256)
    #: Consumer name in the group; must be unique per process. Default: <hostname>-<pid>.
    worker_consumer: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    #: A job's lease: another worker may take the job over this long after its last heartbeat.
    lease_s: float = Field(60.0, gt=0.2, le=3600)
    #: Heartbeat period (renews the lease); must be well under lease_s.
    heartbeat_s: float = Field(15.0, gt=0.05, le=1200)
    #: How often stranded request entries are looked for.
    reclaim_interval_s: float = Field(5.0, gt=0.05, le=600)
    #: Deliveries of one request entry (crashes, lost leases) before it is dead-lettered.
    max_deliveries: int = Field(5, ge=1, le=100)
    #: Transient failures retried inside one delivery, each as a new attempt (a Redis outage does
    #: not count: the next attempt waits for Redis; worker/service/job.py).
    retry_max: int = Field(3, ge=0, le=20)
    #: First retry delay; doubled after each retry, capped at retry_backoff_max_s.
    retry_backoff_s: float = Field(1.0, ge=0, le=600)
    retry_backoff_max_s: float = Field(30.0, ge=0, le=3600)
    #: Lifetime of a job's status stream and state hash after the job ends.
    job_ttl_s: int = Field(24 * 3600, ge=1)
    #: Lifetime of a job's stream (chunk bytes + statuses) after the job ends; at most job_ttl_s.
    chunk_ttl_s: int = Field(3600, ge=1)
    #: Approximate length the events stream is trimmed to (XADD MAXLEN ~).
    events_maxlen: int = Field(100_000, ge=100)
    #: Approximate length the dead-letter stream is trimmed to (each entry <= ~21 KB: ~210 MB at most).
    dead_maxlen: int = Field(10_000, ge=100)
    #: Target size of one chunk entry (whole packets; just under 1 MiB wastes no Redis memory).
    chunk_size: int = Field(1024 * 1024 - 4096, ge=4096, le=64 * 1024 * 1024)
    #: Minimum time between progress entries of one job.
    progress_interval_s: float = Field(0.25, ge=0.01, le=60)
    #: How long SIGTERM waits for running jobs before releasing them for reclaim.
    drain_timeout_s: float = Field(25.0, ge=0, le=3600)

    #: How far before a requested range begin async spans still open at it are looked for (0: not at
    #: all). Costs one more query that reads this much of the process's async events.
    async_lookback_s: float = Field(900.0, ge=0, le=7 * 24 * 3600)

    # -- Limits
    #: Longest time range one trace may cover.
    max_range_s: float = Field(7 * 24 * 3600.0, gt=0)
    #: Most spans in one trace.
    max_spans: int = Field(50_000_000, ge=1)
    #: Most log entries in one trace (requests with `logs`); more fail with trace_too_large.
    max_log_entries: int = Field(5_000_000, ge=1)
    #: Most measures in one trace (requests with `metrics`); more fail with trace_too_large.
    max_measures: int = Field(20_000_000, ge=1)
    #: Most bytes in one trace.
    max_trace_bytes: int = Field(4 * 1024**3, ge=1024)
    #: Largest accepted `request` field, checked before parsing.
    max_request_bytes: int = Field(16 * 1024, ge=256, le=16 * 1024)
    #: Longest run time of one attempt.
    job_timeout_s: float = Field(3600.0, gt=0)

    # -- Operations
    #: Address of the HTTP endpoints (/livez, /readyz, /metrics, /asyncapi.json); empty = no HTTP.
    #: 127.0.0.1 for development; containers set 0.0.0.0. Port 0 picks a free port.
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    #: Log lines as text or json (one JSON object per line).
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Event loop of ``run`` and ``gateway``: uvloop (libuv, in C: less CPU per job; see
    #: docs/PERFORMANCE.md) or Python's own asyncio loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    # -- Gateway (trace-worker gateway: HTTP API and web page)
    #: Address of the gateway; containers set 0.0.0.0. Port 0 picks a free port.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    #: When set, every /api call needs `Authorization: Bearer <token>` (the page asks for it once).
    gateway_token: SecretStr | None = None
    #: Comma-separated origins allowed to call the API from other pages (CORS); unset: same origin only.
    gateway_cors_origins: str | None = None
    #: Largest request body accepted (a trace request is at most 16 KiB of JSON).
    gateway_max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Event streams and trace downloads served at once; more are refused with 429.
    gateway_max_streams: int = Field(64, ge=1, le=100_000)
    #: Longest a trace download waits for its bytes before failing with 504.
    gateway_download_timeout_s: float = Field(600.0, gt=0)
    #: The Perfetto UI the page opens traces in (postMessage target origin).
    gateway_perfetto_origin: str = Field("https://ui.perfetto.dev", pattern=r"^https?://[^/\s]+$")

    @field_validator("redis_url")
    @classmethod
    def _redis_arguments(cls, value: str) -> str:
        problem = redis_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("flightsql_url")
    @classmethod
    def _flight_scheme(cls, value: str) -> str:
        if not value.startswith(("grpc://", "grpc+tcp://", "grpc+tls://", "http://", "https://")):
            raise ValueError("flightsql_url must start with grpc://, grpc+tls://, http:// or https://")
        return value

    @field_validator("blob_url")
    @classmethod
    def _blob_scheme(cls, value: str) -> str:
        if not value.startswith(("file://", "s3://")):
            raise ValueError("blob_url must start with file:// or s3://")
        return value

    @model_validator(mode="after")
    def _cluster_database(self) -> Settings:
        if self.redis_cluster and _redis_database(self.redis_url) != 0:
            raise ValueError(
                "TRACE_WORKER_REDIS_URL names database "
                f"{_redis_database(self.redis_url)}, but a Redis Cluster has only database 0 "
                "(TRACE_WORKER_REDIS_CLUSTER=true)"
            )
        return self

    @model_validator(mode="after")
    def _lease(self) -> Settings:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(
                "TRACE_WORKER_HEARTBEAT_S must be at most half of TRACE_WORKER_LEASE_S "
                "(a lease needs a renewal in time)"
            )
        return self

    def redis_url_with_credentials(self, url: str | None = None) -> str:
        """``url`` (default ``redis_url``) with ``redis_username`` and ``redis_password`` put in
        (percent-encoded) where the URL has no user name or password of its own: what the worker,
        the gateway and the command-line client connect with. Holds the password: never log it."""
        url = url or self.redis_url
        parts = urlsplit(url)
        add_user = self.redis_username is not None and not parts.username
        add_password = self.redis_password is not None and not parts.password
        if not (add_user or add_password):
            return url
        user = quote(self.redis_username or "", safe="") if add_user else (parts.username or "")
        password = (
            quote(self.redis_password.get_secret_value(), safe="")
            if add_password and self.redis_password is not None
            else parts.password
        )
        where = parts.netloc.rpartition("@")[2]
        login = user + ("" if password is None else ":" + password)
        return urlunsplit(parts._replace(netloc=f"{login}@{where}"))

    @property
    def gateway_cors_origin_list(self) -> list[str]:
        """``gateway_cors_origins`` split on commas, blanks dropped."""
        return [o.strip() for o in (self.gateway_cors_origins or "").split(",") if o.strip()]

    @property
    def consumer_name(self) -> str:
        """This process's consumer name in the group."""
        return self.worker_consumer or f"{socket.gethostname()}-{os.getpid()}"


def redis_url_problem(url: str) -> str | None:
    """Why redis-py cannot connect with ``url`` (it hands unknown query arguments to its connections,
    which fail with a TypeError only when connecting), or None. Never quotes the URL: it may hold a
    password."""
    from redis.asyncio.connection import Connection, ConnectionPool, parse_url  # noqa: PLC0415 (--help stays light)

    try:
        options = parse_url(url)
    except ValueError as exc:
        return str(exc)
    connection: type = options.pop("connection_class", Connection)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted: set[str] = set()
    for owner in (ConnectionPool, *connection.__mro__):
        if "__init__" in vars(owner):
            params = inspect.signature(vars(owner)["__init__"]).parameters.values()
            accepted |= {p.name for p in params if p.kind in named and p.name != "self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        return (
            f"unknown query argument{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
            "(redis-py reads e.g. db, password, ssl_cert_reqs; names are case-sensitive)"
        )
    return None


def _redis_database(url: str) -> int:
    """The database index a Redis URL selects (path or ``db`` argument; 0 when none)."""
    from redis.asyncio.connection import parse_url  # noqa: PLC0415 (--help stays light)

    return int(parse_url(url).get("db") or 0)


class SettingsError(ValueError):
    """Unknown or invalid settings. The message names each variable (``TRACE_WORKER_...``), one
    problem after another, separated by ``; ``."""


def env_name(field: str) -> str:
    """The variable of a settings field: ``lease_s`` -> ``TRACE_WORKER_LEASE_S``."""
    return f"{ENV_PREFIX}{field.upper()}"


def unknown_names(env_file: str | Path | None = ".env") -> list[str]:
    """``TRACE_WORKER_*`` names in the environment or ``env_file`` that are neither a setting nor one
    of :data:`OTHER_NAMES`, sorted, each with a suggestion when one is close."""
    names = set(os.environ)
    if env_file is not None and Path(env_file).is_file():
        names |= set(dotenv_values(env_file))
    known = {env_name(field) for field in Settings.model_fields} | OTHER_NAMES
    found = []
    for name in sorted({n.upper() for n in names if n.upper().startswith(ENV_PREFIX)} - known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        found.append(f"unknown setting {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    return found


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            problems.append(f"bad setting {env_name(str(error['loc'][0]))}: {message}")
        else:
            problems.append(f"bad settings: {message}")
    return problems


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """The settings from the environment and ``env_file`` (a missing file is fine), with
    ``overrides`` (command-line options) on top.

    Raises:
        SettingsError: a misspelt ``TRACE_WORKER_*`` name, or invalid values (each named).
    """
    problems = unknown_names(env_file)
    if not problems:
        try:
            return Settings(_env_file=env_file, **overrides)
        except ValidationError as exc:
            problems = _describe(exc)
    raise SettingsError("; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once (see :func:`load_settings`)."""
    return load_settings()
