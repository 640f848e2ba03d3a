"""The app as users reach it: start-up time of ``python app.py`` and round trips through Gradio's REST
API (``POST /gradio_api/call/<api>`` then the result stream, as browsers and curl do) and gradio_client.
Loopback only; every run is bounded in count and time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import httpx

from .timing import time_calls

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(args: list[str], log_path: Path, timeout: float = 600) -> Iterator[tuple[str, float, subprocess.Popen]]:
    """Start ``python app.py ARGS`` on a free loopback port; yield (url, seconds until it served, process)."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            seconds = wait_until_serving(url, process, started, timeout, log_path)
            yield url, seconds, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_until_serving(url: str, process: subprocess.Popen, started: float, timeout: float, log_path: Path) -> float:
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/gradio_api/info", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"app.py did not serve within {timeout:.0f} s; see {log_path}")


def rest_call(client: httpx.Client, url: str, api: str, data: list) -> list:
    """One call the way a browser or curl makes it: POST the inputs, then read the event stream."""
    response = client.post(f"{url}/gradio_api/call/{api}", json={"data": data})
    response.raise_for_status()
    event_id = response.json()["event_id"]
    event = None
    with client.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line[5:].strip() or "null")
                if event == "error":
                    raise RuntimeError(f"/{api} answered an error: {payload}")
                return payload
    raise RuntimeError(f"/{api}: the stream ended without a result")


def upload(client: httpx.Client, url: str, path: Path) -> dict:
    response = client.post(f"{url}/gradio_api/upload", files={"files": (path.name, path.read_bytes(), "image/png")})
    response.raise_for_status()
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}}


def round_trips(url: str, queries: list[str], images: list[Path], model: str = "SGE", warmup: int = 3) -> dict:
    """p50/p95 of REST and gradio_client calls for /search_text (top 10) and /search_image (upload + call)."""
    from gradio_client import Client, handle_file

    out = {}
    with httpx.Client(timeout=60) as client:
        text = [lambda q=q: rest_call(client, url, "search_text", [q, model, 10]) for q in queries]
        image = [lambda p=p: rest_call(client, url, "search_image", [upload(client, url, p), model, 10]) for p in images]
        # Gradio's own cost of one call: an endpoint that does next to nothing (picks a random caption)
        out["rest_baseline"] = timed([lambda: rest_call(client, url, "random_query", [])] * len(queries), warmup)
        out["rest_search_text"] = timed(text, warmup)
        out["rest_search_image"] = timed(image, warmup)
    gradio_client = Client(url, verbose=False)
    text = [lambda q=q: gradio_client.predict(q, model, 10, api_name="/search_text") for q in queries]
    image = [lambda p=p: gradio_client.predict(handle_file(str(p)), model, 10, api_name="/search_image") for p in images]
    out["client_search_text"] = timed(text, warmup)
    out["client_search_image"] = timed(image, warmup)
    return out


def timed(calls: list, warmup: int) -> dict:
    """Per-call latency of argument-free ``calls`` (``timing.time_calls``), as a dict."""
    return time_calls(lambda call: call(), calls, warmup).as_dict()


def start_times(app_args: list[str], cache_dir: Path, log_dir: Path, cold: bool = True,
                first: Optional[tuple[str, Path]] = None) -> dict[str, Optional[float]]:
    """Seconds from ``python app.py`` to serving, without (cold) and with (warm) the embedding cache; with
    ``first`` (a text and an image file), the warm app's first queries too (see ``first_queries``)."""
    times: dict[str, Optional[float]] = {"cold_start_s": None}
    args = [*app_args, "--cache-dir", str(cache_dir)]
    if cold:
        with running_app(args, log_dir / "cold.log") as (_, seconds, _):
            times["cold_start_s"] = round(seconds, 1)
    with running_app(args, log_dir / "warm.log") as (url, seconds, _):
        times["warm_start_s"] = round(seconds, 1)
        if first:
            times.update(first_queries(url, *first))
    return times


def first_queries(url: str, text: str, image: Path, settle_s: float = 2.0, model: str = "Ensemble") -> dict[str, float]:
    """REST round trips (ms) of the first text query and the first image upload + query of a freshly
    started app, ``settle_s`` after it serves (a person opening the page takes longer than that)."""
    time.sleep(settle_s)
    with httpx.Client(timeout=60) as client:
        text_ms = timed([lambda: rest_call(client, url, "search_text", [text, model, 10])], warmup=0)["p50_ms"]
        image_ms = timed([lambda: rest_call(client, url, "search_image", [upload(client, url, image), model, 10])],
                         warmup=0)["p50_ms"]
    return {"first_text_query_ms": round(text_ms, 1), "first_image_query_ms": round(image_ms, 1)}
