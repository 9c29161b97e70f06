"""ingress/routing.py: who owns a tool, prompt or resource URI."""

from __future__ import annotations

import pytest

from ingress.aggregate import merge
from ingress.naming import Naming
from ingress.routing import NotRouted, Route, route_named, route_resource, template_regex


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        # literal templates
        ("file:///etc/hosts", "file:///etc/hosts", True),
        ("file:///etc/hosts", "file:///etc/hostsX", False),
        ("file:///etc/hosts", "xfile:///etc/hosts", False),
        ("res://a.b/x", "res://aXb/x", False),  # literal dots are escaped
        # simple {var}: one segment
        ("file:///{name}", "file:///notes.txt", True),
        ("file:///{name}", "file:///", True),
        ("file:///{name}", "file:///dir/notes.txt", False),
        ("file:///{name}", "file:///a?b", False),
        ("users://{id}/profile", "users://42/profile", True),
        ("users://{id}/profile", "users://42/profile/extra", False),
        ("users://{id}/profile", "users://4/2/profile", False),
        ("repo://{owner}/{repo}", "repo://octo/hello", True),
        ("repo://{owner,repo}", "repo://octo,hello", True),
        # {+var} reserved expansion: slashes allowed
        ("file:///{+path}", "file:///dir/sub/notes.txt", True),
        ("file:///{+path}", "file:///", True),
        ("file:///{+path}", "http:///x", False),
        # {#var} fragment
        ("doc://x{#frag}", "doc://x#section-2", True),
        # {/var} path segments
        ("api://v1{/segments}", "api://v1/a/b/c", True),
        ("api://v1{/segments}", "api://v1", True),
        ("api://v1{/segments}", "api://v1x", False),
        ("api://v1{/segments}", "api://v1/a?b", False),
        # {.var} label
        ("host://example{.tld}", "host://example.com", True),
        ("host://example{.tld}", "host://example.co.uk", True),
        ("host://example{.tld}", "host://examplecom", False),
        # {;var} path parameters
        ("m://x{;p}", "m://x;p=1;q=2", True),
        ("m://x{;p}", "m://x", True),
        ("m://x{;p}", "m://xp=1", False),
        # {?var} and {&var} query
        ("search://q{?term,limit}", "search://q?term=a&limit=2", True),
        ("search://q{?term}", "search://q", True),
        ("search://q{?term}", "search://qterm=a", False),
        ("search://q?fixed=1{&more}", "search://q?fixed=1&more=2", True),
        ("search://q?fixed=1{&more}", "search://q?fixed=1", True),
        ("search://q?fixed=1{&more}", "search://q?fixed=2", False),
    ],
)
def test_template_regex(template: str, uri: str, matches: bool) -> None:
    assert bool(template_regex(template).match(uri)) is matches


def test_template_regex_is_anchored_and_cached() -> None:
    pattern = template_regex("a://{x}")
    assert pattern is template_regex("a://{x}")
    assert not pattern.match("a://b/c")
    assert pattern.match("zz a://b") is None


# -- tools and prompts -----------------------------------------------------------------------------

SERVERS = ["fs", "web", "db"]
OWNERS = {"fs__read": ("fs", "read"), "renamed": ("web", "original"), "web__get": ("web", "get")}


@pytest.mark.parametrize(
    ("exposed", "owners", "naming", "expected"),
    [
        # with a catalog
        ("fs__read", OWNERS, Naming(), Route("fs", "read")),
        ("renamed", OWNERS, Naming(), Route("web", "original")),
        ("web__get", OWNERS, Naming(mode="none"), Route("web", "get")),
        # known server, unknown tool: nothing owns it
        ("fs__delete", OWNERS, Naming(), NotRouted("tool", "fs__delete", ("fs", "web", "db"))),
        ("web__x", OWNERS, Naming(), NotRouted("tool", "web__x", ("fs", "web", "db"))),
        ("nothing", OWNERS, Naming(), NotRouted("tool", "nothing", ("fs", "web", "db"))),
        # a server missing from the catalog (down at build time) answers for its own prefix
        ("db__query", {"fs__read": ("fs", "read")}, Naming(), Route("db", "query")),
        # without a catalog: the prefix decides
        ("fs__read", None, Naming(), Route("fs", "read")),
        ("web__any__thing", None, Naming(), Route("web", "any__thing")),
        ("zz__read", None, Naming(), NotRouted("tool", "zz__read", ("fs", "web", "db"))),
        ("read", None, Naming(mode="none"), NotRouted("tool", "read", ("fs", "web", "db"))),
        # empty catalog: every server is missing from it
        ("fs__read", {}, Naming(), Route("fs", "read")),
    ],
)
def test_route_named(exposed: str, owners: dict | None, naming: Naming, expected: object) -> None:
    assert route_named(exposed, "tool", owners, naming, SERVERS) == expected


def test_route_named_prompt_kind_in_error() -> None:
    result = route_named("x__y", "prompt", {}, Naming(), [])
    assert isinstance(result, NotRouted)
    assert result.what == "prompt"
    assert result.message == "unknown prompt 'x__y': searched no servers are available"


def test_not_routed_message_names_the_servers() -> None:
    nr = NotRouted("tool", "fs__delete", ("fs", "web", "db"))
    assert nr.message == "unknown tool 'fs__delete': searched fs, web, db"
    for server in ("fs", "web", "db"):
        assert server in nr.message


# -- resources -------------------------------------------------------------------------------------


EXACT = {"file:///a.txt": "fs", "mem://x": "mem"}
TEMPLATES = [("fs", "file:///{+path}"), ("mem", "mem://{key}"), ("web", "https://{+rest}")]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///a.txt", Route("fs", "file:///a.txt")),
        ("mem://x", Route("mem", "mem://x")),
        ("file:///b/c.txt", Route("fs", "file:///b/c.txt")),
        ("mem://other", Route("mem", "mem://other")),
        ("https://example.com/page", Route("web", "https://example.com/page")),
        ("mem://a/b", NotRouted("resource", "mem://a/b", ("fs", "mem", "web"))),
        ("ftp://x", NotRouted("resource", "ftp://x", ("fs", "mem", "web"))),
    ],
)
def test_route_resource(uri: str, expected: object) -> None:
    assert route_resource(uri, EXACT, TEMPLATES, ["fs", "mem", "web"]) == expected


def test_exact_match_beats_an_earlier_template() -> None:
    templates = [("catchall", "{+anything}"), ("fs", "file:///{+path}")]
    assert route_resource("file:///a.txt", {"file:///a.txt": "fs"}, templates, ["catchall", "fs"]) == Route(
        "fs", "file:///a.txt")
    # without an exact entry, the first template in config order wins
    assert route_resource("file:///b.txt", {}, templates, ["catchall", "fs"]) == Route("catchall", "file:///b.txt")


def test_route_resource_message() -> None:
    result = route_resource("zz://q", {}, [], ["a", "b"])
    assert isinstance(result, NotRouted)
    assert result.message == "unknown resource 'zz://q': searched a, b"


def test_merged_index_holds_routes_ready_to_hand_out() -> None:
    merged = merge("tools/list", [("a", [{"name": "x"}]), ("b", [{"name": "y"}])], Naming())
    owner = merged.owners["a__x"]
    assert owner == Route("a", "x") == ("a", "x")
    assert route_named("a__x", "tool", merged.owners, Naming(), ["a", "b"]) is owner
    # An index of plain tuples (built elsewhere) still routes.
    assert route_named("b__y", "tool", {"b__y": ("b", "y")}, Naming(), ["a", "b"]) == Route("b", "y")
