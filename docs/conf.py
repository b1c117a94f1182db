"""Sphinx configuration of the django-distributed-locks documentation (scripts/docs).

Markdown sources (MyST), the reference generated from the docstrings (autodoc), and the
figures of a run (docs/_generated/, written by docs/_generate.py before the build).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "_settings")

import django  # noqa: E402

django.setup()

import _generate  # noqa: E402

_generate.generate()

project = "django-distributed-locks"
author = "The django-distributed-locks authors"
copyright = "the django-distributed-locks authors"
release = _generate.project_version()
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
#: _generated/ holds pages included by others, never pages of their own.
exclude_patterns = ["_build", "_data", "_generated", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
#: "[...](#6a-shared-locks-and-semaphores-shared-and-limit)" and the like, GitHub's slugs.
myst_heading_anchors = 4

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options: dict[str, object] = {}

# -n (nitpicky): every cross-reference must resolve. Names of Python, Django and the drivers
# have no inventory here (the build makes no network request), so they are not checked.
nitpicky = True
nitpick_ignore_regex = [
    # Internal names that public docstrings mention (not documented: they may change).
    (r"py:.*", r"(django_locks\.)?(guard|renewal)\b.*|.*\b(LockGuard|LeaseRenewer|_AcquiringLease|Mode)"),
    (r"py:.*", r"(django_locks\.cluster\.)?(CacheCluster|RedisCluster)"),
    (r"py:.*", r"django_locks\.(decorators\.F|fencing\._M)"),
    (r"py:.*", r"FAIR_RESERVE_US|WaitingCalls|django_locks\.backends\.base"),
    (r"py:.*", r"(datetime|typing|collections|asyncio|contextlib|threading|types|enum|abc)\b.*"),
    (r"py:.*", r"(django|redis|django_redis)\..*"),
    (r"py:.*", r"(int|str|bool|float|bytes|object|None|dict|list|tuple|set|type|Exception|UserWarning)"),
    (r"py:.*", r"(Any|Callable|Iterator|Iterable|Sequence|Mapping|Awaitable|Coroutine|TypeVar|Self)"),
]

html_theme = "furo"
html_title = f"django-distributed-locks {release}"
html_static_path: list[str] = []


def resolve_short_names(app, env, node, contnode):
    """Resolve ``:class:`LockTimeoutError``` and the like, written in a docstring of another
    module, to the one documented object whose dotted name ends with it."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")
    matches = [name for name in domain.objects if name == target or name.endswith("." + target)]
    if len(matches) != 1:
        return None
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], matches[0], node, contnode)


def setup(app):
    app.connect("missing-reference", resolve_short_names)
