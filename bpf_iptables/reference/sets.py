"""Where the reference semantics (and the compiler) find the sets that
``-m set`` names: by default the current namespace's bpf-iptables-set
store, read without creating anything; ``using()`` puts other sets in its
place (tests, and anything evaluating rules for another namespace)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from ..ipset.model import IpSet

_override: "list[dict[str, IpSet]]" = []
_cache: list = []   # [(file identity), sets] of the last read


def current_sets() -> "dict[str, IpSet]":
    """Set name -> set, as the rules of this namespace see them."""
    if _override:
        return _override[-1]
    from ..ipset.store import FILE, read_sets
    from ..state import netns_cookie, run_dir

    directory = run_dir() / f"netns-{netns_cookie()}"
    try:
        st = (directory / FILE).stat()
        stamp = (str(directory), st.st_mtime_ns, st.st_size, st.st_ino)
    except FileNotFoundError:
        return {}
    # a restore parses every rule: read the file once while it is unchanged
    if _cache and _cache[0] == stamp:
        return _cache[1]
    sets = read_sets(directory)
    _cache[:] = [stamp, sets]
    return sets


def lookup(name: str) -> "IpSet | None":
    return current_sets().get(name)


@contextmanager
def using(sets: "dict[str, IpSet]") -> Iterator[None]:
    _override.append(sets)
    try:
        yield
    finally:
        _override.pop()
