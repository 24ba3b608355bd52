"""Settings from environment variables (prefix ``TRACE_WORKER_``) or a ``.env`` file.

One flat model so that the variable names stay short and documented (``TRACE_WORKER_REDIS_URL``,
``TRACE_WORKER_FLIGHTSQL_URL``, ...); fields are grouped by name prefix, one group per part. The
full table is in docs/CONFIGURATION.md; a test checks that table against this model.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.keys import DEFAULT_PREFIX

__all__ = ["Settings", "get_settings"]

_PREFIX_RE = r"^[A-Za-z0-9._-]{1,64}$"


class Settings(BaseSettings):
    """Every setting of the worker and its command line."""

    model_config = SettingsConfigDict(env_prefix="TRACE_WORKER_", env_file=".env", extra="forbid")

    # -- Redis
    #: Redis URL (redis://, rediss:// for TLS; a password goes in the URL or TRACE_WORKER_REDIS_PASSWORD).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    #: Prefix of every key and stream the worker touches.
    key_prefix: str = Field(DEFAULT_PREFIX, pattern=_PREFIX_RE)

    # -- Flight SQL (Micromegas)
    flightsql_url: str = "grpc://127.0.0.1:50051"
    flightsql_token: SecretStr | None = None
    #: PEM file with the CA that signs the server's certificate (grpc+tls://); default: system roots.
    flightsql_tls_ca: str | None = None
    flightsql_tls_skip_verify: bool = False
    #: Ask the server to keep dictionary-encoded string columns (less data on the wire).
    flightsql_preserve_dictionary: bool = True
    #: How many threads' spans are fetched at once.
    flightsql_concurrency: int = Field(4, ge=1, le=64)

    @field_validator("flightsql_url")
    @classmethod
    def _flight_scheme(cls, value: str) -> str:
        if not value.startswith(("grpc://", "grpc+tcp://", "grpc+tls://", "http://", "https://")):
            raise ValueError("flightsql_url must start with grpc://, grpc+tls://, http:// or https://")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
