"""Load test of the running app on loopback: concurrent gradio_client clients sending mixed requests
(text, image upload, compare), the server's memory over thousands of requests, and an overload burst
that must be answered "busy" (HTTP 503, queue full) rather than fail.

    python -m benchmarks.load [--clients 16] [--requests 50] [--memory-requests 2000] [--json out.json]

Bounded: every client sends a fixed number of requests, each with a timeout; the app is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from app.gallery import load_gallery

from .http import running_app
from .timing import rss_bytes, summarise

ASSETS = Path(__file__).resolve().parents[1] / "assets"
KINDS = ("text", "text", "image", "compare")  # a text query is the common case


def client_session(url: str, n_requests: int, seed: int, captions: list[str], images: list[Path]) -> list[dict]:
    """One user: a gradio_client that sends ``n_requests`` mixed requests; one record per request."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    rng, records = random.Random(seed), []
    for _ in range(n_requests):
        kind, model = rng.choice(KINDS), rng.choice(["SGE", "CGE", "Ensemble"])
        started, error = time.perf_counter(), None
        try:
            if kind == "text":
                gallery, _ = client.predict(rng.choice(captions), model, 10, api_name="/search_text")
                ok = len(gallery) == 10
            elif kind == "image":
                _, gallery, _ = client.predict(handle_file(str(rng.choice(images))), model, 5, api_name="/search_image")
                ok = len(gallery) == 5
            else:
                sge, cge, _ = client.predict(rng.choice(captions), None, 8, api_name="/compare")
                ok = len(sge) == len(cge) == 8
            if not ok:
                error = "wrong number of results"
        except Exception as err:  # noqa: BLE001 -- every failure is counted and reported
            error = f"{type(err).__name__}: {err}"[:200]
        records.append({"kind": kind, "seconds": time.perf_counter() - started, "error": error})
    return records


def load_phase(url: str, clients: int, per_client: int, captions, images, seed: int) -> list[dict]:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client_session, url, per_client, seed + i, captions, images) for i in range(clients)]
        return [record for future in futures for record in future.result()]


def summary(records: list[dict], seconds: float) -> dict:
    errors = [r["error"] for r in records if r["error"]]
    out = {"requests": len(records), "errors": len(errors), "first_errors": errors[:5],
           "throughput_per_s": round(len(records) / seconds, 1), "all": summarise([r["seconds"] for r in records]).as_dict()}
    for kind in sorted(set(KINDS)):
        times = [r["seconds"] for r in records if r["kind"] == kind]
        if times:
            out[kind] = summarise(times).as_dict()
    return out


def overload_burst(url: str, captions: list[str], n: int = 200) -> dict:
    """``n`` simultaneous REST calls, more than the queue holds: each is served or answered 503 (busy)."""
    outcomes: dict[str, int] = {"served": 0, "busy": 0, "other": 0}
    lock = threading.Lock()

    def call(i: int) -> None:
        try:
            response = httpx.post(f"{url}/gradio_api/call/search_text",
                                  json={"data": [captions[i % len(captions)], "Ensemble", 10]}, timeout=60)
            if response.status_code == 503:
                outcome = "busy"
            else:
                event_id = response.json()["event_id"]
                body = httpx.get(f"{url}/gradio_api/call/search_text/{event_id}", timeout=120).text
                outcome = "served" if "event: complete" in body else "other"
        except httpx.HTTPError:
            outcome = "other"
        with lock:
            outcomes[outcome] += 1

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(call, range(n)))
    return outcomes


def run(args) -> dict:
    gallery = load_gallery(args.gallery)
    captions, images = gallery.captions, list(gallery.image_paths[:50])
    work = Path(tempfile.mkdtemp(prefix="user-load-"))
    app_args = ["--sge", args.sge, "--cge", args.cge, "--gallery", args.gallery, "--cache-dir", args.cache_dir]
    results: dict = {"clients": args.clients, "requests_per_client": args.requests}
    with running_app(app_args, work / "app.log") as (url, start_s, process):
        results["start_s"] = round(start_s, 1)
        started = time.perf_counter()
        records = load_phase(url, args.clients, args.requests, captions, images, seed=0)
        results["load"] = summary(records, time.perf_counter() - started)
        print(f"load: {results['load']['requests']} requests, {results['load']['errors']} errors, "
              f"p50 {results['load']['all']['p50_ms']:.0f} ms, p95 {results['load']['all']['p95_ms']:.0f} ms", flush=True)
        if args.memory_requests:
            results["memory"] = memory_phase(url, process.pid, args, captions, images)
        results["overload"] = overload_burst(url, captions)
        after = load_phase(url, 2, 5, captions, images, seed=99)
        results["after_overload_errors"] = sum(1 for r in after if r["error"])
    return results


def rest_session(url: str, n_requests: int, seed: int, captions: list[str], images: list[Path]) -> list[dict]:
    """A light client (plain HTTP, as a browser or curl) sending mixed requests; one record per request."""
    from .http import rest_call, upload

    rng, records = random.Random(seed), []
    with httpx.Client(timeout=120) as client:
        for _ in range(n_requests):
            kind, model = rng.choice(KINDS), rng.choice(["SGE", "CGE", "Ensemble"])
            started, error = time.perf_counter(), None
            try:
                if kind == "text":
                    rest_call(client, url, "search_text", [rng.choice(captions), model, 10])
                elif kind == "image":
                    rest_call(client, url, "search_image", [upload(client, url, rng.choice(images)), model, 5])
                else:
                    rest_call(client, url, "compare", [rng.choice(captions), None, 8])
            except Exception as err:  # noqa: BLE001 -- counted and reported
                error = f"{type(err).__name__}: {err}"[:200]
            records.append({"kind": kind, "seconds": time.perf_counter() - started, "error": error})
    return records


def memory_phase(url: str, pid: int, args, captions, images) -> dict:
    """Server RSS after each tenth of ``memory_requests`` more requests (plain HTTP clients, so that the
    server, not the load generator, sets the pace); growth from the first sample to the last."""
    rounds, per_round = 10, max(1, math.ceil(args.memory_requests / 10 / args.clients))
    samples, records, started = [], [], time.perf_counter()
    for r in range(rounds):
        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            sessions = pool.map(lambda i: rest_session(url, per_round, 1000 * (r + 1) + i, captions, images),
                                range(args.clients))
            records += [record for session in sessions for record in session]
        samples.append(round(rss_bytes(pid) / 2**20, 1))
        print(f"memory: {(r + 1) * per_round * args.clients} requests, server RSS {samples[-1]} MB", flush=True)
    return {**summary(records, time.perf_counter() - started), "rss_mb": samples,
            "growth_percent": round(100 * (samples[-1] - samples[0]) / samples[0], 2)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=50, help="requests per client in the load phase")
    p.add_argument("--memory-requests", type=int, default=2000, help="requests of the memory phase (0: skip)")
    p.add_argument("--sge", default=str(ASSETS / "user-sge"))
    p.add_argument("--cge", default=str(ASSETS / "user-cge"))
    p.add_argument("--gallery", default=str(ASSETS / "gallery"))
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "user-demo"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
