"""Who is looking, and what they may see and do — the Kubernetes answer, always.

Authentication, one mode per console:

- `token`: a Kubernetes bearer token, checked with a TokenReview. Browsers
  paste it once on /login and keep it in an HttpOnly, SameSite=Strict cookie
  (as Kubernetes Dashboard does); scripts send `Authorization: Bearer`.
- `proxy`: behind an authenticating proxy (oauth2-proxy, an ingress with
  auth): `X-Forwarded-User` and `X-Forwarded-Groups` are believed only from a
  peer address inside the configured proxy CIDRs; anyone else gets 401.
- `open`: `tidings dev` only: no identity, everything allowed, and only
  for peers on loopback that name it by a loopback name in `Host` (a page
  from elsewhere whose DNS name is rebound to 127.0.0.1 still sends its own
  name: refused, so it cannot drive the console through the browser).

Authorisation: every read and every action is a SubjectAccessReview for the
viewer (user, groups, uid, extra) — the console's own ServiceAccount only
reads; it never lends its rights to a viewer. The checks:

| what | SubjectAccessReview |
| --- | --- |
| see a Trigger, its attempts, dead letters | get triggers (namespace, name) |
| see an EventSource, its events | get eventsources (namespace, name) |
| pause / resume | patch triggers (namespace, name) |
| replay dead letters | create replays (in the Trigger's namespace) |
| see a Trigger's Replays | list replays |

Answers are cached for a few seconds per (viewer, question): a page polls
every couple of seconds and must not cost the API server a review per poll.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tidings.api.types import GROUP
from tidings.sources.kubeapi import ApiError, KubeApi

Mode = Literal["token", "proxy", "open"]
MODES: tuple[Mode, ...] = ("token", "proxy", "open")
COOKIE = "tidings-console-token"
CACHE_SECONDS = 5.0


class Unauthenticated(Exception):
    """No identity, or one the cluster does not accept; the message says why."""


class WrongHost(Exception):
    """403: tidings dev's open console reached by a name that is not loopback's."""


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # What the CSRF token is bound to: the credential (hashed) or the proxy's user.
    session: str = ""
    open: bool = False  # tidings dev: no checks

    @property
    def label(self) -> str:
        return "local (tidings dev)" if self.open else self.user


@dataclass(frozen=True)
class Question:
    verb: str
    resource: str
    namespace: str
    name: str = ""
    subresource: str = ""

    def describe(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        target = f"{self.namespace}/{self.name}" if self.name else f"namespace {self.namespace}"
        return f"{self.verb} {what} ({target})"


def can_get_trigger(namespace: str, name: str = "") -> Question:
    return Question("get", "triggers", namespace, name)


def can_get_source(namespace: str, name: str = "") -> Question:
    return Question("get", "eventsources", namespace, name)


def can_pause(namespace: str, name: str) -> Question:
    return Question("patch", "triggers", namespace, name)


def can_replay(namespace: str) -> Question:
    """Replaying is creating a Replay (docs/replay.md), whichever way the console
    carries it out: exactly what the viewer could do with kubectl."""
    return Question("create", "replays", namespace)


def can_list_replays(namespace: str) -> Question:
    return Question("list", "replays", namespace)


def parse_cidrs(values: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--trusted-proxy {value!r}: not a CIDR; give the proxy's addresses, "
                "e.g. 10.0.0.0/8 or 127.0.0.1/32"
            ) from None
    return networks


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def host_name(host: str) -> str:
    """The name part of a Host header: `[::1]:8080` -> `::1`, `localhost:8080` ->
    `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host  # a bare name, or a bare IPv6 address


def is_loopback_host(host: str | None) -> bool:
    return bool(host) and host_name(str(host)) in LOOPBACK_HOSTS


@dataclass
class Gate:
    """Authentication and authorisation for one console."""

    mode: Mode
    kube: KubeApi | None = None
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list
    )
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _reviews: dict[str, tuple[float, Identity]] = field(default_factory=dict)
    _answers: dict[tuple[Identity, Question], tuple[float, bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode != "open" and self.kube is None:
            raise ValueError(f"auth mode {self.mode} needs the Kubernetes API")
        if self.mode == "proxy" and not self.trusted_proxies:
            raise ValueError(
                "--auth proxy needs --trusted-proxy CIDR (the proxy's addresses): "
                "forwarded identity headers from anyone else are never believed"
            )

    # --- who ---------------------------------------------------------------------------

    async def identify(self, *, peer: str | None, headers: Any, cookie: str | None) -> Identity:
        if self.mode == "open":
            if not is_loopback(peer):
                raise Unauthenticated(
                    "the console of tidings dev answers on loopback only; "
                    "run `tidings console` for a shared one"
                )
            host = headers.get("Host")
            if not is_loopback_host(host):
                raise WrongHost(
                    f"the console of tidings dev answers to 127.0.0.1, localhost or [::1] "
                    f"only, not to Host {host!r} (a page elsewhere could drive it through "
                    "this browser); open it as http://127.0.0.1:PORT/console/"
                )
            return Identity(user="", session="open", open=True)
        if self.mode == "proxy":
            return self._from_proxy(peer, headers)
        header = str(headers.get("Authorization", ""))
        token = header[7:].strip() if header[:7].lower() == "bearer " else (cookie or "")
        if not token:
            raise Unauthenticated("sign in with a Kubernetes token")
        return await self._review(token)

    def _from_proxy(self, peer: str | None, headers: Any) -> Identity:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            address = None
        if address is None or not any(address in net for net in self.trusted_proxies):
            raise Unauthenticated(
                f"requests must come through the authenticating proxy ({peer} is not in "
                "--trusted-proxy)"
            )
        user = str(headers.get("X-Forwarded-User", "")).strip()
        if not user:
            raise Unauthenticated("the proxy sent no X-Forwarded-User")
        groups = tuple(
            g.strip() for g in str(headers.get("X-Forwarded-Groups", "")).split(",") if g.strip()
        )
        return Identity(user=user, groups=groups, session="proxy:" + user)

    async def _review(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._reviews.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        assert self.kube is not None
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        try:
            review = await self.kube.request(
                "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body
            )
        except ApiError as error:
            raise Unauthenticated(f"the API server could not review the token: {error}") from None
        status = review.get("status") or {}
        if not status.get("authenticated"):
            raise Unauthenticated(
                "the API server does not accept this token"
                + (f": {status['error']}" if status.get("error") else "")
            )
        user = status.get("user") or {}
        identity = Identity(
            user=str(user.get("username", "")),
            groups=tuple(user.get("groups") or ()),
            uid=str(user.get("uid", "")),
            extra=tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items())),
            session=digest,
        )
        self._reviews[digest] = (now + CACHE_SECONDS, identity)
        return identity

    # --- may they ----------------------------------------------------------------------

    async def allowed(self, identity: Identity, question: Question) -> bool:
        if identity.open:
            return True
        now = time.monotonic()
        cached = self._answers.get((identity, question))
        if cached and cached[0] > now:
            return cached[1]
        assert self.kube is not None
        attributes = {
            "namespace": question.namespace,
            "verb": question.verb,
            "group": GROUP,
            "resource": question.resource,
        }
        if question.name:
            attributes["name"] = question.name
        if question.subresource:
            attributes["subresource"] = question.subresource
        spec: dict[str, Any] = {"user": identity.user, "resourceAttributes": attributes}
        if identity.groups:
            spec["groups"] = list(identity.groups)
        if identity.uid:
            spec["uid"] = identity.uid
        if identity.extra:
            spec["extra"] = {k: list(v) for k, v in identity.extra}
        review = await self.kube.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": spec,
            },
        )
        answer = bool((review.get("status") or {}).get("allowed"))
        if len(self._answers) > 10_000:  # many viewers, long uptime: start over
            self._answers.clear()
        self._answers[(identity, question)] = (now + CACHE_SECONDS, answer)
        return answer

    # --- CSRF --------------------------------------------------------------------------

    def csrf_token(self, identity: Identity) -> str:
        """Bound to the viewer's credential: a token from one session is useless in
        another, and a cross-site form cannot read it."""
        return hmac.new(self.csrf_secret, identity.session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, identity: Identity, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(identity), str(token))
