"""ingress/naming.py: exposed names on the aggregate and their reverse mapping."""

from __future__ import annotations

import itertools
import re

import pytest

from ingress.naming import Naming

CLIENT_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@pytest.mark.parametrize(
    ("naming", "server", "name", "expected"),
    [
        (Naming(), "github", "create_issue", "github__create_issue"),
        (Naming(), "a", "b", "a__b"),
        (Naming(separator="."), "fs", "read", "fs.read"),
        (Naming(separator="-"), "fs", "read", "fs-read"),
        (Naming(mode="none"), "github", "create_issue", "create_issue"),
        (Naming(mode="none", separator="."), "fs", "read", "read"),
    ],
)
def test_expose(naming: Naming, server: str, name: str, expected: str) -> None:
    assert naming.expose(server, name) == expected


@pytest.mark.parametrize("max_length", [16, 20, 32, 64, 256])
def test_exactly_max_length_is_kept(max_length: int) -> None:
    naming = Naming(max_length=max_length)
    name = "x" * (max_length - len("srv__"))
    assert naming.expose("srv", name) == f"srv__{name}"


@pytest.mark.parametrize("max_length", [16, 20, 32, 64, 100])
@pytest.mark.parametrize("mode", ["prefix", "none"])
def test_long_names_are_shortened_unique_and_stable(max_length: int, mode: str) -> None:
    naming = Naming(max_length=max_length, mode=mode)  # type: ignore[arg-type]
    common = "a_very_long_tool_name_that_shares_a_prefix_" * 4
    names = [common + suffix for suffix in ("one", "two", "three", "x", "y")] + [common]
    servers = ["alpha", "beta"]
    exposed = [naming.expose(s, n) for s, n in itertools.product(servers, names)]
    assert all(len(e) <= max_length for e in exposed), exposed
    assert all(len(e) == max_length for e in exposed)  # every one of these was too long
    if mode == "prefix":
        assert len(set(exposed)) == len(exposed), "shortened names collide"
    else:
        # same tool name on two servers may clash in mode none (first server wins), but names of one
        # server stay distinct
        assert len({naming.expose("alpha", n) for n in names}) == len(names)
    # stable: the same input always yields the same name
    assert exposed == [naming.expose(s, n) for s, n in itertools.product(servers, names)]


def test_shortened_default_names_stay_client_safe() -> None:
    naming = Naming()
    exposed = naming.expose("github", "t" * 200)
    assert CLIENT_SAFE.match(exposed), exposed
    assert exposed.startswith("github__ttt")


def test_shortened_name_does_not_collide_with_a_literal_short_name() -> None:
    naming = Naming(max_length=16)
    long = naming.expose("s", "abcdefghijklmnopqrstuvwxyz")
    assert len(long) == 16
    assert naming.expose("s", "abcdefghijklmnopqrstuvwxyz0") != long


@pytest.mark.parametrize(
    ("naming", "exposed", "servers", "expected"),
    [
        (Naming(), "github__create_issue", ["github", "fs"], ("github", "create_issue")),
        (Naming(), "fs__read__file", ["github", "fs"], ("fs", "read__file")),
        (Naming(), "fs__", ["fs"], None),  # nothing after the separator
        (Naming(), "fs", ["fs"], None),
        (Naming(), "unknown__tool", ["github", "fs"], None),
        (Naming(), "github__x", [], None),
        (Naming(), "gith__x", ["github"], None),
        (Naming(), "github_x", ["github"], None),
        # longest server prefix wins, whatever the order of servers
        (Naming(), "a__b__c", ["a", "a__b"], ("a__b", "c")),
        (Naming(), "a__b__c", ["a__b", "a"], ("a__b", "c")),
        (Naming(), "a__bc", ["a", "a__b"], ("a", "bc")),
        (Naming(separator="-"), "my-server-tool", ["my", "my-server"], ("my-server", "tool")),
        (Naming(separator="-"), "my-server-tool", ["my-server", "my"], ("my-server", "tool")),
        (Naming(separator="-"), "my-tool", ["my", "my-server"], ("my", "tool")),
        (Naming(separator="."), "fs.read", ["fs"], ("fs", "read")),
        # mode none: names carry no server
        (Naming(mode="none"), "github__create_issue", ["github"], None),
        (Naming(mode="none"), "create_issue", ["github"], None),
    ],
)
def test_split(naming: Naming, exposed: str, servers: list[str], expected: tuple[str, str] | None) -> None:
    assert naming.split(exposed, servers) == expected


@pytest.mark.parametrize(("server", "name"), [("github", "create_issue"), ("a", "b__c"), ("x-y", "z"), ("s", "_")])
def test_expose_split_round_trip(server: str, name: str) -> None:
    naming = Naming()
    assert naming.split(naming.expose(server, name), ["other", server]) == (server, name)
