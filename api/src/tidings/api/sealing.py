"""Secrets cross Redis sealed, never in plain text.

The operator reads Secrets (ingest tokens, signing keys) from the API and seals
them with a symmetric key before writing the routing table; dispatchers unseal
them in memory. The key comes from a Kubernetes Secret mounted into both
(`TIDINGS_SEAL_KEY_FILE`) or `TIDINGS_SEAL_KEY`; someone who can read Redis but
not that Secret sees only ciphertext. Fernet = AES-128-CBC + HMAC-SHA256, with
a timestamp we ignore. See docs/design.md, "Secrets".
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from cryptography.fernet import Fernet, InvalidToken

ENV_KEY = "TIDINGS_SEAL_KEY"
ENV_KEY_FILE = "TIDINGS_SEAL_KEY_FILE"


SealerT = TypeVar("SealerT", bound="Sealer")


class SealError(RuntimeError):
    """No key configured, or a value sealed with another key."""


def new_key() -> str:
    return Fernet.generate_key().decode()


def load_key(path: str | os.PathLike[str] | None = None) -> str:
    """The seal key from `path`, $TIDINGS_SEAL_KEY_FILE or $TIDINGS_SEAL_KEY."""
    file = path or os.environ.get(ENV_KEY_FILE)
    if file:
        try:
            key = Path(file).read_text().strip()
        except OSError as error:
            raise SealError(
                f"{ENV_KEY_FILE}={file}: cannot read the seal key ({error.strerror or error}); "
                "mount the seal key Secret there (the Helm chart does)"
            ) from None
        if not key:
            raise SealError(f"{ENV_KEY_FILE}={file}: the file is empty; put the seal key in it")
        return key
    key = os.environ.get(ENV_KEY, "").strip()
    if key:
        return key
    raise SealError(
        f"no seal key: set {ENV_KEY_FILE} to a file holding a key (the Helm chart mounts one) "
        f"or {ENV_KEY}; make one with `python -c 'from tidings.api.sealing import new_key; "
        "print(new_key())'`"
    )


class Sealer:
    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except ValueError as error:
            raise SealError(f"seal key is not a valid Fernet key: {error}") from None

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def unseal(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SealError(
                "a sealed secret does not open with this seal key: operator and dispatcher "
                "must mount the same key"
            ) from None


class StableSealer(Sealer):
    """A Sealer that gives the same ciphertext for the same plaintext: the one it
    learned from the routing table, else the one it made first.

    Fernet ciphertexts differ on every call (random IV), so re-sealing an
    unchanged secret would rewrite its route and bump the table version on
    every operator restart or `tidings dev` reload. The operator and `tidings
    dev` both seal with this.
    """

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self._known: dict[str, str] = {}

    def seal(self, plain: str) -> str:
        sealed = self._known.get(plain)
        if sealed is None:
            sealed = self._known[plain] = super().seal(plain)
        return sealed

    def learn(self, sealed_values: Iterable[str | None]) -> None:
        """Adopt ciphertexts found in the table (ones sealed with another key are
        ignored: they get re-sealed, which is how a new seal key rolls out)."""
        for sealed in sealed_values:
            if not sealed:
                continue
            try:
                self._known[self.unseal(sealed)] = sealed
            except SealError:
                continue


def load_sealer(
    path: str | os.PathLike[str] | None = None,
    kind: type[SealerT] = Sealer,  # type: ignore[assignment]
) -> SealerT:
    """The Sealer of the configured key; SealError (naming TIDINGS_SEAL_KEY_FILE)
    when none is configured or it is no key. Processes that open or seal secrets
    refuse to start without one: a made-up key would only fail later, on every
    sealed value, at run time."""
    key = load_key(path)
    try:
        return kind(key)
    except SealError as error:
        where = path or os.environ.get(ENV_KEY_FILE) or ENV_KEY
        raise SealError(
            f"{where}: {error}; {ENV_KEY_FILE} must name a file holding a Fernet key "
            "(32 url-safe base64 bytes, as new_key() makes)"
        ) from None


class OpenedSecrets:
    """Unsealed values by ciphertext, least recently used first out.

    Unsealing costs ~20 µs and the same few secrets open on every request and
    delivery; the bound keeps a table that churns through many secrets (key
    rotations, a hostile stream of bogus tokens) from growing memory forever.
    """

    def __init__(self, sealer: Sealer, max_entries: int = 10_000) -> None:
        self.sealer = sealer
        self.max_entries = max_entries
        self._opened: OrderedDict[str, str] = OrderedDict()

    def unseal(self, sealed: str) -> str:
        plain = self._opened.get(sealed)
        if plain is not None:
            self._opened.move_to_end(sealed)
            return plain
        plain = self._opened[sealed] = self.sealer.unseal(sealed)
        if len(self._opened) > self.max_entries:
            self._opened.popitem(last=False)
        return plain

    def __len__(self) -> int:
        return len(self._opened)
