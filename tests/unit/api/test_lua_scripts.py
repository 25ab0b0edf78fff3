"""The Redis scripts: .lua files that say what they take, assembled from one set of names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tidings.api import keys, scripts

SCRIPT_FILES = [f for f in scripts.files() if not f.startswith("_")]
FRAGMENTS = [f for f in scripts.files() if f.startswith("_")]
REPO = Path(__file__).parents[3]
ROOTS = [REPO / part / "src" for part in ("api", "dispatcher", "operator", "cli")]


def header(file: str) -> str:
    """The comment lines a file starts with."""
    lines = []
    for line in scripts.read(file).splitlines():
        if not line.startswith("--") or line.startswith("--#include"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("file", scripts.files())
def test_every_lua_file_names_its_keys_and_argv_in_its_header(file: str) -> None:
    text = header(file)
    assert re.search(r"^-- KEYS:", text, re.MULTILINE), f"{file}: no '-- KEYS:' line in the header"
    assert re.search(r"\bARGV:", text), f"{file}: no 'ARGV:' in the header"


@pytest.mark.parametrize("file", scripts.files())
def test_every_placeholder_and_include_resolves(file: str) -> None:
    source = scripts.assemble(file)
    assert not scripts.PLACEHOLDER.search(source)
    assert "--#include" not in source


def test_placeholders_become_the_lua_strings_of_the_keys_constants() -> None:
    source = scripts.BACKOFF_RECOVER.source
    assert f"'{keys.STATE_PROBE_DUE}'" in source
    assert f"'{keys.BACKOFF}'" in source
    assert not scripts.PLACEHOLDER.search(source)


def test_a_fragment_is_included_once_per_script() -> None:
    # cursor_fetch includes _now.lua directly; its `local now` must appear once.
    assert scripts.CURSOR_FETCH.source.count("local now =") == 1
    assert scripts.CURSOR_SETTLE.source.count("local function limits_take") == 1


def test_every_fragment_is_included_by_some_script() -> None:
    included = {
        f for script in SCRIPT_FILES for f in re.findall(r"--#include (\S+)", scripts.read(script))
    }
    for fragment in FRAGMENTS:
        nested = {
            f for other in FRAGMENTS for f in re.findall(r"--#include (\S+)", scripts.read(other))
        }
        assert fragment in included | nested, f"{fragment} is included nowhere"


def test_every_script_file_is_loaded_once_by_the_loader() -> None:
    loaded = {value.name for value in vars(scripts).values() if isinstance(value, scripts.Script)}
    assert loaded == {f.removesuffix(".lua") for f in SCRIPT_FILES}


def test_the_sha_is_that_of_the_source_sent() -> None:
    for value in vars(scripts).values():
        if isinstance(value, scripts.Script):
            assert value.sha == hashlib.sha1(value.source.encode()).hexdigest()


def test_fragments_cannot_be_loaded_as_scripts() -> None:
    with pytest.raises(ValueError, match="fragment"):
        scripts.load("_now")


def test_the_time_preamble_is_written_once() -> None:
    for file in scripts.files():
        if file != "_now.lua":
            assert "redis.call('TIME')" not in scripts.read(file), f"{file}: include _now.lua"


def test_every_name_in_keys_is_used_somewhere() -> None:
    sources = "\n".join(
        path.read_text()
        for root in ROOTS
        for path in root.rglob("*")
        if path.suffix in (".py", ".lua") and path.name != "keys.py"
    )
    unused = [
        name
        for name in scripts.names()
        if not re.search(rf"(keys\.{name}\b|\{{\{{{name}\}}\}}|\b{name}\b)", sources)
    ]
    assert unused == [], f"constants of tidings.api.keys nothing uses: {unused}"
