"""Every Redis script of Tidings, from the .lua files in `lua/` next to this module.

Each file names its KEYS and ARGV in a comment header. A file whose name starts
with `_` is a fragment (the TIME preamble, the limits, ordering and dead-letter
functions): a script takes one in with a line `--#include _name.lua`, in place.
`{{NAME}}` stands for the constant NAME of tidings.api.keys, put in as a Lua
string literal, so every key, field and channel name is spelled once. All of
this happens once, at import; a call sends only the script's SHA1.

Scripts run with EVALSHA. A Redis that does not have one yet (restarted,
failed over, a new cluster node) answers NOSCRIPT; the script is then loaded
(SCRIPT LOAD: on every primary of a Redis Cluster) and the call repeated. The
SHA1 is a function of the text, so no client keeps a cache of its own, and a
redis.asyncio.Redis and a RedisCluster are served alike (every script's KEYS
share one hash tag, so a cluster routes it to that slot's node).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from tidings.api import keys

_INCLUDE = re.compile(r"^--#include (\S+)$", re.MULTILINE)
PLACEHOLDER = re.compile(r"\{\{([A-Z][A-Z0-9_]*)\}\}")
# A value put into Lua between single quotes must not need escaping.
_PLAIN = re.compile(r"^[^'\\\n]*$")


def names() -> dict[str, str]:
    """What a `{{NAME}}` may stand for: the str constants of tidings.api.keys."""
    return {
        name: value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str)
    }


def read(file: str) -> str:
    """The text of lua/`file`, as written."""
    return resources.files(__package__).joinpath("lua", file).read_text()


def files() -> list[str]:
    """Every .lua file, fragments included."""
    folder = resources.files(__package__).joinpath("lua")
    return sorted(f.name for f in folder.iterdir() if f.name.endswith(".lua"))


def assemble(file: str) -> str:
    """The Lua a script sends: fragments included (each once), names put in."""
    values = names()
    seen: set[str] = set()

    def include(match: re.Match[str]) -> str:
        fragment = match.group(1)
        if not fragment.startswith("_"):
            raise ValueError(f"{file}: includes {fragment}, which is not a fragment (_*.lua)")
        if fragment in seen:
            return f"-- (included above: {fragment})"
        seen.add(fragment)
        return _INCLUDE.sub(include, read(fragment)).rstrip("\n")

    def name(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            raise ValueError(f"{file}: {match.group(0)} is not a constant of tidings.api.keys")
        if not _PLAIN.match(value):
            raise ValueError(f"{file}: {match.group(0)} = {value!r} needs escaping in Lua")
        return f"'{value}'"

    return PLACEHOLDER.sub(name, _INCLUDE.sub(include, read(file)))


@dataclass(frozen=True)
class Script:
    """One script, ready to call: `await script(redis, keys=[...], args=[...])`."""

    name: str
    source: str
    sha: str

    async def __call__(
        self,
        redis: Redis | RedisCluster,
        keys: Sequence[str],
        args: Sequence[EncodableT] = (),
    ) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[EncodableT] = ()) -> None:
        """Add a call to `pipe` (its reply, or NoScriptError, comes with the others)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, redis: Redis | RedisCluster) -> None:
        """SCRIPT LOAD, after a NOSCRIPT answer."""
        await redis.script_load(self.source)


def load(name: str) -> Script:
    """The script lua/`name`.lua (not a fragment), assembled."""
    if name.startswith("_"):
        raise ValueError(f"{name} is a fragment: include it in a script")
    source = assemble(f"{name}.lua")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


# Every script, by the module that calls it.
TABLE_PUT = load("table_put")  # tidings.api.table
ENSURE_STREAM = load("groups_ensure_stream")  # tidings.api.groups
APPEND = load("streams_append")  # tidings.dispatcher.streams
JOURNAL_WRITE = load("journal_write")  # tidings.sources.journal
OBJECTSTORE_SYNC = load("objectstore_sync")  # tidings.sources.objectstore
CURSOR_FETCH = load("cursor_fetch")  # tidings.dispatcher.cursor
CURSOR_SETTLE = load("cursor_settle")
BACKOFF_ENTER = load("backoff_enter")  # tidings.dispatcher.backoff_state
BACKOFF_CLAIM = load("backoff_claim")
BACKOFF_PROBE_FAILED = load("backoff_probe_failed")
BACKOFF_RECOVER = load("backoff_recover")
BACKOFF_PUBLISH = load("backoff_publish")
RETENTION_TRIM = load("retention_trim")  # tidings.dispatcher.retention
RETENTION_TRIM_DEAD_LETTERS = load("retention_trim_dead_letters")
DEADLETTER_HAND_BACK = load("deadletter_hand_back")  # tidings.dispatcher.deadletter
REPLAY_START = load("replay_start")  # tidings.dispatcher.replays
REPLAY_HAND_BACK = load("replay_hand_back")
REPLAY_COUNT = load("replay_count")
REPLAY_CANCEL = load("replay_cancel")  # tidings.api.replays
