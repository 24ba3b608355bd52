"""Command-line options that say how to reach the Flight SQL service (shared by several commands)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from worker.cli import UsageError
from worker.errors import InvalidRequest
from worker.settings import Settings, get_settings
from worker.source import FlightSqlConfig

__all__ = ["add_connection_args", "check_source_settings", "config_from_args"]


def add_connection_args(parser: argparse.ArgumentParser, *, concurrency: bool = False) -> None:
    """``--flightsql``, ``--token``, ``--tls-ca``, ``--tls-skip-verify`` (and ``--concurrency``)."""
    parser.add_argument("--flightsql", metavar="URL", help="grpc:// or grpc+tls:// URL (default: settings)")
    parser.add_argument(
        "--token", metavar="T", help="bearer token (default: env TRACE_WORKER_FLIGHTSQL_TOKEN)"
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="PEM CA of the server's certificate (grpc+tls://)")
    parser.add_argument("--tls-skip-verify", action="store_true", help="accept any server certificate")
    if concurrency:
        parser.add_argument("--concurrency", type=int, metavar="N", help="threads fetched at once (1-64)")


def config_from_args(args: argparse.Namespace) -> FlightSqlConfig:
    """The source configuration: command-line options over settings (environment, .env).

    Raises:
        UsageError: unreadable CA file, bad URL, bad settings or concurrency.
    """
    # SettingsError: reported by the command line as every command does
    base = check_source_settings(get_settings())
    ca = base.tls_ca_pem
    if args.tls_ca:
        try:
            ca = Path(args.tls_ca).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --tls-ca {args.tls_ca}: {exc.strerror}") from exc
    concurrency = getattr(args, "concurrency", None)
    if concurrency is not None and not 1 <= concurrency <= 64:
        raise UsageError("--concurrency must be from 1 to 64")
    try:
        # Every setting of the base reaches the command (batch timeout, dictionaries, ...): only
        # what an option names is replaced.
        return dataclasses.replace(
            base,
            url=args.flightsql or base.url,
            token=args.token or base.token,
            tls_ca_pem=ca,
            tls_skip_verify=args.tls_skip_verify or base.tls_skip_verify,
            concurrency=concurrency or base.concurrency,
        )
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from exc


def check_source_settings(settings: Settings) -> FlightSqlConfig:
    """The source configuration of ``settings``; bad Flight SQL settings (URL, unreadable or
    certificate-less CA, token) are refused as :class:`UsageError` (one line, exit status 2), so a
    service refuses them before it starts, not from inside it.
    """
    try:
        return FlightSqlConfig.from_settings(settings)
    except (ValueError, InvalidRequest) as exc:
        raise UsageError(f"bad settings: {exc}") from exc
