"""Hostile paths and methods (issue #22, item 6): scanner floods, odd methods, percent-encoded
and overlong paths against real servers of the example apps (the FastAPI example under
uvicorn, the Flask example under gunicorn with two workers).

What must hold, whatever arrives:

- nothing raises: no 5xx answer, no traceback in the server's output, no internal error
  counted in ``devkit_internal_errors_total`` but the documented degradation of a log
  record the application wrote with an integer beyond 64 bits (docs/logs.md#failures);
- the label set of the request metrics stays bounded. devkit bounds it by construction
  (docs/metrics.md#cardinality-is-bounded-by-construction): ``route`` is a template of
  the application's router or ``<unmatched>``, ``method`` one of the nine standard
  methods or ``_OTHER`` (as the OpenTelemetry HTTP conventions say), ``status_code`` an
  integer in 100..599. So ``methods x (routes + 1) x status codes`` bounds it; the test
  checks every label against those sets and that a second flood of as many new paths
  adds no label set.

gunicorn runs with ``--limit-request-line 0`` and ``--permit-unconventional-http-method``
so that overlong request lines and lower-case or custom methods reach devkit instead of
being refused by gunicorn itself (uvicorn passes them on by default, up to its own
request-line limit: what it refuses is counted as ``rejected_by_server``).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
import rows
from hostile import Reply, raw_request
from servers import ROOT, Server, clean_env, samples

from conftest import ASGI_APP, WSGI_APP, GunicornFactory, UvicornFactory
from devkit.config import UNMATCHED_ROUTE
from devkit.conventions import DURATION, ERRORS_TOTAL, IN_PROGRESS, REQUESTS_TOTAL
from devkit.metrics import STANDARD_METHODS

pytestmark = pytest.mark.integration

SECTION = "Hostile input"
#: Distinct scanner paths in each of the two floods (ten times more in the full run).
FLOOD = 1_000
FULL_FLOOD = 20_000
CLIENTS = 8
METHOD_LABELS = STANDARD_METHODS | {"_OTHER"}
#: The request metrics' families and the sample names they expose.
REQUEST_SAMPLES = {
    REQUESTS_TOTAL: REQUESTS_TOTAL,
    ERRORS_TOTAL: ERRORS_TOTAL,
    f"{DURATION}_bucket": DURATION,
    f"{DURATION}_count": DURATION,
    f"{DURATION}_sum": DURATION,
}
#: What devkit documents as a degraded record, not a failure: the example apps log the
#: item id they were given, and ``/items/99999999999999999999`` makes it an integer
#: beyond 64 bits (docs/logs.md#failures).
DOCUMENTED = frozenset({("logs", "unserialisable_record")})
#: Status codes a server sends itself, before the application: a request it refused.
SERVER_REFUSALS = {400, 414, 431}

# -- what a scanner sends --------------------------------------------------------------------

SCANNER_TEMPLATES = (
    "/wp-admin/{word}.php",
    "/wp-login.php?redirect_to={word}",
    "/.env.{word}",
    "/.git/{word}",
    "/../../etc/passwd.{word}",
    "/cgi-bin/{word}.cgi",
    "/phpmyadmin/{word}/index.php",
    "/vendor/phpunit/{word}/eval-stdin.php",
    "/api/v{n}/{word}",
    "/.well-known/{word}",
    "/actuator/{word}",
    "/{word}",
    "/{word}/{word2}/{n}",
    "/items/{word}",  # an application route with a value its converter refuses
    "/items/{n}",  # and one it takes
    "/static/{word}.js",
    "/%2e%2e/%2e%2e/{word}",
)
SCANNER_METHODS = ("GET", "GET", "POST", "HEAD")

ODD_METHODS = (
    "PROPFIND",
    "MKCOL",
    "PURGE",
    "QUERY",
    "BREW",
    "M-SEARCH",
    "get",
    "Get",
    "post",
    "X-CUSTOM-TOKEN",
    "A" * 64,
    "B" * 4096,
    "TRACE",
    "CONNECT",
    "OPTIONS",
)
ODD_METHOD_PATHS = ("/", "/items/1", "/wp-admin/", "/nowhere/{n}")

ENCODED_PATHS = (
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2fetc%2fpasswd",
    "/..%c0%af..%c0%afetc/passwd",
    "/%00",
    "/items/%00",
    "/%ff%fe%fd",
    "/%zz%g1%",
    "/a%2Fb%2Fc",
    "/%E2%80%AE%E2%80%8B",
    "/%F0%9F%92%A9/%F0%9F%92%A9",
    "/items/%31%32",
    "/items/-1",
    "/items/99999999999999999999",
    "/items/1%0d%0aSet-Cookie:%20x=1",
    "//etc/passwd",
    "/./././items/1",
    "/static/..%2f..%2f..%2fetc/passwd",
    "/?q=%27%20OR%201=1--",
    "/items/1?" + "&".join(f"k{i}=%ff" for i in range(200)),
)
#: Path lengths from 8 KB up; what the server refuses before devkit is counted as such.
OVERLONG = (8 * 1024, 16 * 1024, 64 * 1024, 1024 * 1024)


def scanner_paths(count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` distinct (method, path) pairs as a vulnerability scanner sends them, each
    template and method in turn so that every flood covers every combination."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for i in range(count):
        template = SCANNER_TEMPLATES[i % len(SCANNER_TEMPLATES)]
        method = SCANNER_METHODS[(i // len(SCANNER_TEMPLATES)) % len(SCANNER_METHODS)]
        word = f"{seed}x{i}" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz-_", k=8))
        path = template.format(word=word, word2=rng.getrandbits(32), n=seed * 10**7 + i)
        out.append((method, path))
    assert len(set(out)) == count
    return out


def odd_method_requests() -> list[tuple[str, str]]:
    return [
        (method, path.format(n=i))
        for i, method in enumerate(ODD_METHODS)
        for path in ODD_METHOD_PATHS
    ]


def encoded_and_overlong_requests() -> list[tuple[str, str]]:
    out = [("GET", path) for path in ENCODED_PATHS]
    for size in OVERLONG:
        out.append(("GET", "/" + "a" * (size - 1)))
        out.append(("GET", "/wp-admin/" + "%41" * ((size - 10) // 3)))
        out.append(("GET", "/items/1?" + "q" * (size - 9)))
    return out


# -- the server's answers and metrics --------------------------------------------------------


@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    rejected_by_server: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def add(self, replies: Iterable[Reply]) -> None:
        for reply in replies:
            self.requests += 1
            self.statuses[reply.status] += 1
            if reply.status == 0 or reply.status >= 500:
                self.failed += 1
            elif reply.status in SERVER_REFUSALS:
                self.rejected_by_server += 1


def send(port: int, requests: Sequence[tuple[str, str]]) -> list[Reply]:
    def one(request: tuple[str, str]) -> Reply:
        method, path = request
        return raw_request(port, method.encode("latin-1"), path.encode("latin-1"), timeout=30)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, requests))


@dataclass(frozen=True)
class Scrape:
    text: str

    @property
    def label_sets(self) -> set[tuple[str, str, str]]:
        """Distinct (method, route, status_code) of the request metrics."""
        out = set()
        for (name, labels), _ in samples(self.text).items():
            if name in REQUEST_SAMPLES:
                values = dict(labels)
                out.add((values["method"], values["route"], values["status_code"]))
        return out

    @property
    def in_progress_methods(self) -> set[str]:
        return {
            dict(labels)["method"] for (name, labels) in samples(self.text) if name == IN_PROGRESS
        }

    @property
    def requests(self) -> float:
        return sum(v for (name, _), v in samples(self.text).items() if name == REQUESTS_TOTAL)

    @property
    def internal_errors(self) -> dict[tuple[str, str], float]:
        return {
            (dict(labels)["component"], dict(labels)["reason"]): v
            for (name, labels), v in samples(self.text).items()
            if name == "devkit_internal_errors_total" and v
        }


def scrape(server: Server) -> Scrape:
    """The metrics once every request's books are done: two scrapes a moment apart agree
    on the request count (a WSGI request is counted when its response is closed)."""
    last: Scrape | None = None
    deadline = time.monotonic() + 20
    while True:
        now = Scrape(httpx.get(server.url + "/metrics", timeout=10).text)
        if last is not None and now.requests == last.requests:
            return now
        if time.monotonic() > deadline:
            raise AssertionError("the request count did not settle")
        last = now
        time.sleep(0.3)


def app_routes(app: str) -> set[str]:
    """The route templates of ``app``'s router, read in a process of their own (devkit off)."""
    module, name = app.split(":")
    script = (
        f"import {module} as m, json\n"
        f"app = m.{name}\n"
        "if hasattr(app, 'url_map'):\n"
        "    routes = [r.rule for r in app.url_map.iter_rules()]\n"
        "else:\n"
        "    routes = [getattr(r, 'path_format', None) or r.path for r in app.routes]\n"
        "print(json.dumps(routes))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(DEVKIT_DISABLED="true"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


# -- the runs --------------------------------------------------------------------------------


@dataclass
class Check:
    kind: str
    server: Server
    routes: set[str]
    statuses_seen: set[int] = field(default_factory=set)

    @property
    def route_labels(self) -> set[str]:
        return self.routes | {UNMATCHED_ROUTE}

    def bound(self) -> int:
        """methods x (routes + 1) x the status codes the runs saw."""
        return len(METHOD_LABELS) * len(self.route_labels) * max(len(self.statuses_seen), 1)

    def check(self, scrape: Scrape, allowed: frozenset[tuple[str, str]] = frozenset()) -> None:
        for method, route, status in scrape.label_sets:
            assert method in METHOD_LABELS, method
            assert route in self.route_labels, route
            assert 100 <= int(status) <= 599, status
            self.statuses_seen.add(int(status))
        assert scrape.in_progress_methods <= METHOD_LABELS
        errors = {key: v for key, v in scrape.internal_errors.items() if key not in allowed}
        assert errors == {}, errors
        output = self.server.output()
        assert "Traceback" not in output, output[-3000:]
        # devkit's one-line stderr report of a counted failure names it: only allowed ones.
        reported = [line for line in output.splitlines() if line.startswith("devkit: internal")]
        for line in reported:
            assert any(f"in {c} ({r})" in line for c, r in allowed), line


def run(kind: str, server: Server, app: str, flood: int, *, full: bool = False) -> None:
    check = Check(kind, server, app_routes(app))
    before = scrape(server)
    check.check(before)
    after = scanner_flood(check, before, flood)
    if not full:
        odd = odd_methods(check, after)
        encoded_and_overlong(check, odd)


def scanner_flood(check: Check, before: Scrape, flood: int) -> Scrape:
    """Two floods of distinct scanner paths: the second adds no label set."""
    server, kind = check.server, check.kind
    tally = Tally()
    started = time.perf_counter()
    tally.add(send(server.port, scanner_paths(flood, seed=1)))
    half = scrape(server)
    check.check(half)
    tally.add(send(server.port, scanner_paths(flood, seed=2)))
    after = scrape(server)
    seconds = time.perf_counter() - started
    check.check(after)
    assert tally.failed == 0, tally.statuses
    assert after.label_sets == half.label_sets, after.label_sets - half.label_sets
    assert len(after.label_sets) <= check.bound()
    # Every request reached devkit and was counted once.
    assert after.requests - before.requests == tally.requests - tally.rejected_by_server
    rows.record(
        SECTION,
        f"scanner flood ({kind})",
        f"{2 * flood:,} distinct scanner paths (/wp-admin, /.env, ../etc/passwd, ...) in "
        "two floods, 8 clients",
        requests=tally.requests,
        requests_failed=tally.failed,
        rejected_by_server=tally.rejected_by_server,
        internal_errors=sum(after.internal_errors.values()),
        label_sets_before=len(before.label_sets),
        label_sets_after_first_flood=len(half.label_sets),
        label_sets_after=len(after.label_sets),
        label_set_bound=check.bound(),
        us_per_request=round(seconds / tally.requests * 1e6, 1),
    )
    return after


def odd_methods(check: Check, after: Scrape) -> Scrape:
    """WebDAV, custom tokens, lower case, very long methods."""
    server, kind = check.server, check.kind
    tally = Tally()
    tally.add(send(server.port, odd_method_requests()))
    odd = scrape(server)
    check.check(odd)
    assert tally.failed == 0, tally.statuses
    methods = {method for method, _, _ in odd.label_sets}
    assert methods <= METHOD_LABELS and "_OTHER" in methods
    assert len(odd.label_sets) <= check.bound()
    rows.record(
        SECTION,
        f"odd methods ({kind})",
        f"{len(ODD_METHODS)} methods (PROPFIND, lower case, custom, 4 KB long) on "
        f"{len(ODD_METHOD_PATHS)} paths",
        requests=tally.requests,
        requests_failed=tally.failed,
        rejected_by_server=tally.rejected_by_server,
        internal_errors=sum(odd.internal_errors.values()),
        label_sets_before=len(after.label_sets),
        label_sets_after=len(odd.label_sets),
        label_set_bound=check.bound(),
    )
    return odd


def encoded_and_overlong(check: Check, odd: Scrape) -> None:
    """Percent-encoded, malformed and overlong paths."""
    server, kind = check.server, check.kind
    tally = Tally()
    tally.add(send(server.port, encoded_and_overlong_requests()))
    last = scrape(server)
    check.check(last, allowed=DOCUMENTED)
    assert tally.failed == 0, tally.statuses
    assert len(last.label_sets) <= check.bound()
    lines = server.output().splitlines()
    degraded = sum(v for key, v in last.internal_errors.items() if key in DOCUMENTED)
    rows.record(
        SECTION,
        f"encoded and overlong paths ({kind})",
        f"{len(ENCODED_PATHS)} encoded or malformed paths, paths and queries of 8 KB to 1 MB",
        requests=tally.requests,
        requests_failed=tally.failed,
        rejected_by_server=tally.rejected_by_server,
        internal_errors=sum(last.internal_errors.values()) - degraded,
        records_degraded=degraded,
        label_sets_before=len(odd.label_sets),
        label_sets_after=len(last.label_sets),
        label_set_bound=check.bound(),
        longest_log_line_kb=round(max(len(line) for line in lines) / 1024, 1),
    )


GUNICORN_ARGS = ("--limit-request-line", "0", "--permit-unconventional-http-method")


def test_hostile_paths_and_methods_uvicorn(uvicorn_server: UvicornFactory) -> None:
    run("uvicorn", uvicorn_server(ASGI_APP), ASGI_APP, FLOOD)


def test_hostile_paths_and_methods_gunicorn(gunicorn_server: GunicornFactory) -> None:
    run("gunicorn, 2 workers", gunicorn_server(WSGI_APP, args=GUNICORN_ARGS), WSGI_APP, FLOOD)


@pytest.mark.slow
def test_scanner_flood_full_uvicorn(uvicorn_server: UvicornFactory) -> None:
    run("uvicorn, full run", uvicorn_server(ASGI_APP), ASGI_APP, FULL_FLOOD, full=True)


@pytest.mark.slow
def test_scanner_flood_full_gunicorn(gunicorn_server: GunicornFactory) -> None:
    server = gunicorn_server(WSGI_APP, args=GUNICORN_ARGS)
    run("gunicorn, 2 workers, full run", server, WSGI_APP, FULL_FLOOD, full=True)
