"""The Lua scripts of :class:`~django_locks.backends.cache_clients.redis.RedisLockClient`,
and the one way they are run.

Each script is a file ``lua/<name>.lua``: a header saying what it takes (KEYS and ARGV by
name), what it returns and what it guarantees, then one ``local <name> = KEYS[i]`` /
``ARGV[i]`` line per input, in order. A line ``--- @include "<name>"`` is replaced by
``lua/includes/<name>.lua`` when the script is loaded (each include once per script, the
way BullMQ's loader splices its ``includes/``), placed just before its first use: an
included function is a closure made on every run that reaches it. The named locals are also the Python
side's names: a script is called with keyword arguments (:meth:`Script.bind`), so no
caller counts positions.

A script is read and hashed once, at import, and always run by its SHA1
(:meth:`Script.run`, or :meth:`Script.arun` in an event loop: EVALSHA; a server that
lacks it, after a restart or SCRIPT FLUSH, gets it by EVAL, which also loads it). How a
command reaches the server (a pooled connection, a cluster node, the client's own
``execute_command``) is the caller's ``execute``: see
:mod:`~django_locks.backends.cache_clients.redis_connections`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from operator import itemgetter
from typing import Any

from django_locks.backends.cache_clients.redis_connections import NoScriptError

#: The include directive: a whole line ``--- @include "name"``.
_INCLUDE = re.compile(r'^--- @include "([\w-]+)"[ \t]*$', re.MULTILINE)
#: A named input: ``local name = KEYS[i]`` (also ``= tonumber(ARGV[i])``, ``= ARGV[i] == '1'``).
_INPUT = re.compile(r"^local (\w+) = (?:tonumber\()?(KEYS|ARGV)\[(\d+)\]")
#: KEYS or ARGV used anywhere else (never: every input is read once, by name).
_RAW_INPUT = re.compile(r"\b(?:KEYS|ARGV)\[")


def _lua(*parts: str) -> str:
    return resources.files(__package__).joinpath("lua", *parts).read_text(encoding="utf-8")


def _splice(text: str, included: set[str]) -> str:
    """``text`` with its include lines replaced by the includes (recursively; an include
    already spliced into this script is left out the second time)."""

    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in included:
            return f"-- (include {name!r}: above)"
        included.add(name)
        return _splice(_lua("includes", f"{name}.lua"), included).rstrip("\n")

    return _INCLUDE.sub(include, text)


def _inputs(name: str, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of a script's KEYS and of its ARGV, in order, from its named locals.

    Raises ValueError if they are not numbered 1..n each, or if KEYS or ARGV is read
    anywhere else in code (comments may name them)."""
    found: dict[str, dict[int, str]] = {"KEYS": {}, "ARGV": {}}
    for line in source.splitlines():
        match = _INPUT.match(line)
        if match:
            local, table, index = match.groups()
            if int(index) in found[table]:
                raise ValueError(f"{name}.lua: {table}[{index}] is named twice")
            found[table][int(index)] = local
        elif _RAW_INPUT.search(line.split("--", 1)[0]):
            raise ValueError(f"{name}.lua reads KEYS or ARGV by position: {line.strip()!r}")
    names = []
    for table in ("KEYS", "ARGV"):
        indexes = sorted(found[table])
        if indexes != list(range(1, len(indexes) + 1)):
            raise ValueError(f"{name}.lua: {table} are not named 1..n: {indexes}")
        names.append(tuple(found[table][i] for i in indexes))
    keys, args = names
    if not keys:
        raise ValueError(f"{name}.lua takes no key (a cluster could not route it)")
    return keys, args


class Script:
    """One Lua script of ``lua/``: its text with its includes, its SHA1 and its inputs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _splice(_lua(f"{name}.lua"), set())
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.keys, self.args = _inputs(name, self.source)
        self.numkeys = len(self.keys)
        names = self.keys + self.args
        self._names = frozenset(names)
        getter = itemgetter(*names)
        self._flatten: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            getter if len(names) > 1 else lambda values: (getter(values),)
        )

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:12]}>"

    def bind(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """Its KEYS then its ARGV, in the script's order, from ``values`` by name."""
        if len(values) != len(self._names) or not self._names.issuperset(values):
            raise TypeError(f"{self.name}.lua takes {', '.join(self.keys + self.args)}; "
                            f"got {', '.join(values)}")
        return self._flatten(values)

    def commands(self, inputs: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """The EVALSHA command for ``inputs`` (:meth:`bind`), and the EVAL that loads it."""
        return (("EVALSHA", self.sha, self.numkeys, *inputs),
                ("EVAL", self.source, self.numkeys, *inputs))

    def run(self, execute: Callable[..., Any], inputs: tuple[Any, ...]) -> Any:
        """The script's reply for ``inputs`` (:meth:`bind`), by EVALSHA through
        ``execute`` (one command to the server: ``execute(*command_args)``); by EVAL,
        which loads it, if the server lacks it."""
        by_sha, by_source = self.commands(inputs)
        try:
            return execute(*by_sha)
        except NoScriptError:
            return execute(*by_source)

    async def arun(self, execute: Callable[..., Awaitable[Any]], inputs: tuple[Any, ...]) -> Any:
        """:meth:`run` with an ``execute`` that is awaited."""
        by_sha, by_source = self.commands(inputs)
        try:
            return await execute(*by_sha)
        except NoScriptError:
            return await execute(*by_source)


ACQUIRE = Script("acquire")
MODE_ACQUIRE = Script("mode_acquire")
RELEASE = Script("release")
EXTEND = Script("extend")
FORCE_RELEASE = Script("force_release")
UNMARK = Script("unmark")
PASS_ON = Script("pass_on")
READ = Script("read")

#: Every script, by name.
SCRIPTS: dict[str, Script] = {
    script.name: script
    for script in (ACQUIRE, MODE_ACQUIRE, RELEASE, EXTEND, FORCE_RELEASE, UNMARK, PASS_ON, READ)
}
