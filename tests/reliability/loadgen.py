"""The reliability suite's HTTP client, run as its own process (the test process also
hosts the collectors; a client there would share their GIL). Prints one JSON report.

``ab``: sequential GETs over one keep-alive connection per service, alternating between
the services request by request (their order flips every request), so both see the
machine at the same moments; latency per request in microseconds.

``load``: ``--clients`` concurrent clients (asyncio, one connection each, reopened when
the server closes it) for ``--seconds`` or until ``--requests`` in total; per request its
correlation id, status and the trace server-timing metric the service answered.

Both can sample processes' resident memory (``--pid``) as they go.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def ab(args: argparse.Namespace) -> dict[str, Any]:
    targets = [urlsplit(url) for url in args.url]
    conns = [http.client.HTTPConnection(t.hostname, t.port, timeout=30) for t in targets]
    labels = args.label or [str(i) for i in range(len(targets))]
    latencies: list[list[int]] = [[] for _ in targets]
    failed = [0] * len(targets)
    rss: list[list[Any]] = []
    total = args.warmup + args.requests
    for i in range(total):
        order = range(len(conns)) if i % 2 == 0 else reversed(range(len(conns)))
        for k in order:
            path = args.path.format(i=i % 1000)
            headers = {"X-Correlation-ID": f"{labels[k]}-{i}"}
            started = time.perf_counter_ns()
            try:
                conns[k].request("GET", path, headers=headers)
                response = conns[k].getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conns[k].close()
            elapsed = time.perf_counter_ns() - started
            if not ok:
                failed[k] += 1
            if i >= args.warmup:
                latencies[k].append(elapsed // 1000)
        if args.pid and args.rss_every and i % args.rss_every == 0:
            rss.append([i, {str(pid): rss_kb(pid) for pid in args.pid}])
    return {
        "labels": labels,
        "latency_us": latencies,
        "failed": failed,
        "sent": total,
        "rss": rss,
    }


async def _client(
    n: int, host: str, port: int, args: argparse.Namespace, state: dict[str, Any]
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    seq = 0
    while time.monotonic() < state["deadline"] and state["started"] < state["limit"]:
        state["started"] += 1
        cid = f"L{n}-{seq}"
        seq += 1
        path = args.path.format(i=seq % 1000)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Correlation-ID: {cid}\r\n\r\n".encode()
            )
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("closed before answering")
            status = int(status_line.split()[1])
            length = 0
            close = False
            timing = ""
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
                elif name == "server-timing":
                    timing = value.strip()
            await reader.readexactly(length)
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            state["errors"][type(exc).__name__] += 1
            state["failed_cids"].append(cid)
            if writer is not None:
                writer.close()
            writer = None
            continue
        state["statuses"][status] += 1
        state["cids"].append(cid)
        if status == 200:
            state["ok"] += 1
        # trace;desc="00-<trace id>-<span id>-<flags>": flags 01 = this service keeps it.
        if "00-" in timing:
            parts = timing.split("00-", 1)[1].split('"')[0].split("-")
            if len(parts) == 3:
                state["traces"].append(parts[0])
                if int(parts[2], 16) & 1:
                    state["kept"].append(parts[0])
    if writer is not None:
        writer.close()


async def _sample(args: argparse.Namespace, state: dict[str, Any]) -> None:
    while True:
        state["rss"].append(
            [
                round(time.monotonic() - state["t0"], 2),
                state["ok"],
                {str(pid): rss_kb(pid) for pid in args.pid},
            ]
        )
        await asyncio.sleep(args.rss_every_s)


async def load(args: argparse.Namespace) -> dict[str, Any]:
    target = urlsplit(args.url[0])
    state: dict[str, Any] = {
        "t0": time.monotonic(),
        "deadline": time.monotonic() + args.seconds,
        "limit": args.requests or sys.maxsize,
        "started": 0,
        "ok": 0,
        "statuses": Counter(),
        "errors": Counter(),
        "cids": [],
        "failed_cids": [],
        "traces": [],
        "kept": [],
        "rss": [],
    }
    sampler = asyncio.create_task(_sample(args, state)) if args.pid else None
    await asyncio.gather(
        *(_client(n, str(target.hostname), int(target.port or 80), args, state)
          for n in range(args.clients))
    )  # fmt: skip
    elapsed = time.monotonic() - state["t0"]
    if sampler is not None:
        sampler.cancel()
    state["rss"].append(
        [round(elapsed, 2), state["ok"], {str(pid): rss_kb(pid) for pid in args.pid}]
    )
    return {
        "elapsed_s": elapsed,
        "ok": state["ok"],
        "statuses": {str(k): v for k, v in state["statuses"].items()},
        "errors": dict(state["errors"]),
        "cids": state["cids"],
        "failed_cids": state["failed_cids"],
        "traces": state["traces"],
        "kept": state["kept"],
        "rss": state["rss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["ab", "load"])
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--label", action="append")
    parser.add_argument("--path", default="/items/{i}")
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--pid", type=int, action="append", default=[])
    parser.add_argument("--rss-every", type=int, default=0)
    parser.add_argument("--rss-every-s", type=float, default=1.0)
    args = parser.parse_args()
    report = ab(args) if args.mode == "ab" else asyncio.run(load(args))
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()


# -- scrape and probe storms (run: python -c "import loadgen; loadgen.storm_main()" ...) ------

import contextlib  # noqa: E402
import signal  # noqa: E402


async def _get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection: (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        length = -1
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await (reader.readexactly(length) if length >= 0 else reader.read())
        return status, body
    finally:
        writer.close()


def _requests_total(body: bytes) -> float:
    """The sum of ``http_requests_total`` in an exposition."""
    total = 0.0
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("http_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _scrape_bursts(
    host: str, port: int, args: argparse.Namespace, out: dict[str, Any], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        started = time.monotonic()

        async def one(started: float = started) -> None:
            t0 = time.perf_counter()
            try:
                status, body = await _get(host, port, args.metrics_path)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                out["scrape_errors"][type(exc).__name__] += 1
                return
            out["scrapes"].append(
                [round(started - out["t0"], 3), status, time.perf_counter() - t0,
                 _requests_total(body) if status == 200 else None]
            )  # fmt: skip

        await asyncio.gather(*(one() for _ in range(args.scrapers)))
        out["bursts"] += 1
        with contextlib.suppress(TimeoutError):
            pause = max(0.0, args.burst_every_s - (time.monotonic() - started))
            await asyncio.wait_for(stop.wait(), pause)


async def _probe_loop(
    host: str, port: int, args: argparse.Namespace, out: dict[str, Any], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status, body = await _get(host, port, args.probe_path)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            out["probe_errors"][type(exc).__name__] += 1
        else:
            out["probes"].append([status, time.perf_counter() - t0])
            out["probe_bodies"][body.decode("utf-8", "replace")] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.probe_every_s)


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    """``--scrapers`` concurrent scrapes of ``--metrics-path`` every ``--burst-every-s``,
    and ``--probers`` clients probing ``--probe-path`` every ``--probe-every-s`` each,
    until SIGTERM. Per scrape: [burst start s, status, latency s, sum of
    http_requests_total]; per probe: [status, latency s]; each distinct probe body."""
    target = urlsplit(args.url)
    host, port = str(target.hostname), int(target.port or 80)
    out: dict[str, Any] = {
        "t0": time.monotonic(),
        "bursts": 0,
        "scrapes": [],
        "scrape_errors": Counter(),
        "probes": [],
        "probe_errors": Counter(),
        "probe_bodies": Counter(),
    }
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("storming", file=sys.stderr, flush=True)
    await asyncio.gather(
        _scrape_bursts(host, port, args, out, stop),
        *(_probe_loop(host, port, args, out, stop) for _ in range(args.probers)),
    )
    out["elapsed_s"] = time.monotonic() - out["t0"]
    return out


def storm_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--metrics-path", default="/metrics")
    parser.add_argument("--probe-path", default="/healthz/ready")
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--burst-every-s", type=float, default=1.0)
    parser.add_argument("--probers", type=int, default=5)
    parser.add_argument("--probe-every-s", type=float, default=0.05)
    args = parser.parse_args()
    json.dump(asyncio.run(storm(args)), sys.stdout)
