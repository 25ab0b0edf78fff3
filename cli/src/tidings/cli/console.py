"""`tidings console --listen HOST:PORT`: the web console of a cluster.

    tidings console --listen 0.0.0.0:8090 --redis-url redis://… [--auth token]
    tidings console --auth proxy --trusted-proxy 10.0.0.0/8   # behind oauth2-proxy & co.

Overview of every EventSource and Trigger the viewer may see, a page per
Trigger (spec, recent attempts, dead letters with replay, pause/resume), per
EventSource (ingest URL and a curl example, or the adapter's health) and an
event search that traces one event through every Trigger of its source.

It reads Redis and the Kubernetes API (its own ServiceAccount: list
EventSources and Triggers, patch Triggers, TokenReview and
SubjectAccessReview). A viewer signs in with a Kubernetes bearer token
(`--auth token`, checked with a TokenReview) or arrives through an
authenticating proxy (`--auth proxy`: X-Forwarded-User/-Groups believed only
from --trusted-proxy addresses); every page and action is then checked with a
SubjectAccessReview for that viewer (docs/console.md lists them). `tidings dev`
serves the same console under /console/, open on loopback only.

CSRF tokens are signed with the key in $TIDINGS_CONSOLE_CSRF_KEY_FILE (or
$TIDINGS_CONSOLE_CSRF_KEY): replicas that share it accept each other's forms.
Without one each process makes its own, fine for a single replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tidings.api.process import connect_redis, parse_listen
from tidings.api.settings import CommonSettings, SettingsError, add_arguments, load, setting
from tidings.console.app import Console, build_console
from tidings.console.auth import Gate, Mode, parse_cidrs
from tidings.console.objects import ClusterObjects, SourceView
from tidings.sources.kubeapi import KubeApi


@dataclass(frozen=True)
class ConsoleSettings(CommonSettings):
    listen: str = setting(
        "--listen",
        "TIDINGS_CONSOLE_LISTEN",
        "127.0.0.1:8090",
        "HOST:PORT to serve the console on",
        metavar="HOST:PORT",
    )
    auth: str = setting(
        "--auth",
        "TIDINGS_CONSOLE_AUTH",
        "token",
        "token: viewers sign in with a Kubernetes token (TokenReview); "
        "proxy: an authenticating proxy sends X-Forwarded-User/-Groups",
        choices=("token", "proxy"),
    )
    trusted_proxy: list[str] = setting(
        "--trusted-proxy",
        "TIDINGS_CONSOLE_TRUSTED_PROXY",
        [],
        "with --auth proxy: CIDR of the proxy (repeatable); headers from others are ignored",
        metavar="CIDR",
    )
    kubeconfig: str = setting(
        "--kubeconfig", "TIDINGS_KUBECONFIG", "", "kubeconfig (default: in-cluster, $KUBECONFIG)"
    )
    secure_cookie: bool = setting(
        "--secure-cookie",
        "TIDINGS_CONSOLE_SECURE_COOKIE",
        False,
        "mark the sign-in cookie Secure (serve the console over HTTPS, e.g. behind an Ingress)",
    )
    ingest_url: str = setting(
        "--ingest-url",
        "TIDINGS_CONSOLE_INGEST_URL",
        "",
        "base URL of ingest for the curl examples when a source's status has none",
    )
    replay: str = setting(
        "--replay",
        "TIDINGS_CONSOLE_REPLAY",
        "object",
        "how the replay button replays: object creates a Replay (the operator runs it, "
        "kubectl get replays shows it); direct hands the dead letters back in Redis",
        choices=("direct", "object"),
    )
    redis_cluster: bool = setting(
        "--redis-cluster", "TIDINGS_REDIS_CLUSTER", False, "--redis-url points at a Redis Cluster"
    )
    csrf_key_file: str = setting(
        "--csrf-key-file",
        "TIDINGS_CONSOLE_CSRF_KEY_FILE",
        "",
        "file holding the key that signs CSRF tokens, the same for every replica "
        "(empty: $TIDINGS_CONSOLE_CSRF_KEY, else a random key per process)",
        metavar="PATH",
    )
    csrf_key: str = setting(
        None, "TIDINGS_CONSOLE_CSRF_KEY", "", "the key that signs CSRF tokens, as text"
    )


MIN_CSRF_KEY = 32


def csrf_key(settings: ConsoleSettings) -> bytes | None:
    """The configured CSRF key, or None (each process then makes its own)."""
    where, key = "TIDINGS_CONSOLE_CSRF_KEY", settings.csrf_key.strip()
    if settings.csrf_key_file:
        where = f"--csrf-key-file {settings.csrf_key_file}"
        try:
            key = Path(settings.csrf_key_file).read_text().strip()
        except OSError as error:
            raise SettingsError(
                f"{where}: cannot read the CSRF key ({error.strerror or error}); "
                "mount the console's CSRF key Secret there (the Helm chart does)"
            ) from None
    elif not key:
        return None
    if len(key) < MIN_CSRF_KEY:
        raise SettingsError(
            f"{where}: the CSRF key has {len(key)} characters, fewer than {MIN_CSRF_KEY}; "
            "make one with `openssl rand -base64 48`"
        )
    return key.encode()


async def serve(settings: ConsoleSettings, stop: asyncio.Event) -> None:
    kube = KubeApi.from_config(settings.kubeconfig or None)
    redis = connect_redis(settings.redis_connection(), cluster=settings.redis_cluster)
    mode: Mode = "proxy" if settings.auth == "proxy" else "token"
    gate = Gate(
        mode,
        kube=kube,
        trusted_proxies=parse_cidrs(settings.trusted_proxy),
        csrf_secret=csrf_key(settings) or secrets.token_bytes(32),
    )
    base = settings.ingest_url.rstrip("/")

    def ingest_url(source: SourceView) -> str:
        if source.url:
            return source.url
        return f"{base}/sources/{source.namespace}/{source.name}" if base else ""

    console = Console(
        redis=redis,
        objects=ClusterObjects(kube),
        gate=gate,
        prefix="/",
        ingest_url=ingest_url,
        secure_cookie=settings.secure_cookie,
        replay_mode=settings.replay,
    )
    app = build_console(console)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_listen(settings.listen)
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if port == 0 else port
    print(f"tidings console: http://{host}:{bound}/ ({mode} auth)", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await redis.aclose()
        await kube.close()


async def _main(settings: ConsoleSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(settings, stop)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(ConsoleSettings, args)
        settings.redis_connection()  # the URL, user, password and TLS files fit together
        parse_listen(settings.listen)
        parse_cidrs(settings.trusted_proxy)
        csrf_key(settings)
        if settings.auth == "proxy" and not settings.trusted_proxy:
            raise SettingsError(
                "--auth proxy needs --trusted-proxy CIDR (the proxy's addresses): forwarded "
                "identity headers from anyone else are never believed"
            )
    except ValueError as error:
        print(f"tidings console: {error}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main(settings))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "console",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, ConsoleSettings)
    parser.set_defaults(func=run)
