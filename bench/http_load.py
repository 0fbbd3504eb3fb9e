"""A plain HTTP load generator for ``bench.latency``, run as its own process so that the clients' Python
work does not share an interpreter (or an event loop) with anything else.

CLIENTS threads, each with one keep-alive ``http.client`` connection, POST the JSON bodies of BODIES
(a JSON list, taken round robin) to URL until REQUESTS are answered; a warm-up of up to 4 requests per
client goes first, untimed. Prints one JSON line: requests/s over the timed requests, p50 and p99
latency in seconds, and errors (an answer that is not 200 or does not hold K items).

    python -m bench.http_load URL CLIENTS REQUESTS BODIES K
"""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def run(url: str, clients: int, requests: int, bodies: list[bytes], k: int) -> dict:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(counter: itertools.count, total: int) -> None:
        nonlocal errors
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        headers = {"Content-Type": "application/json"}
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= total:
                    return
                started = time.perf_counter()
                try:
                    connection.request("POST", parts.path, body=bodies[i % len(bodies)], headers=headers)
                    answer = connection.getresponse()
                    payload = answer.read()
                    ok = answer.status == 200 and len(json.loads(payload)["items"]) == k
                except (OSError, http.client.HTTPException, ValueError, KeyError):
                    ok = False
                    connection.close()
                    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                with lock:
                    latencies.append(time.perf_counter() - started)
                    errors += not ok
        finally:
            connection.close()

    def wave(total: int) -> float:
        counter = itertools.count()
        threads = [threading.Thread(target=client, args=(counter, total)) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    wave(min(requests, 4 * clients))  # warm-up
    latencies.clear()
    errors = 0
    wall = wave(requests)
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": requests,
        "rps": requests / wall,
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": errors,
    }


def main() -> None:
    url, clients, requests, bodies, k = sys.argv[1:6]
    with open(bodies) as f:
        encoded = [json.dumps(body).encode() for body in json.load(f)]
    print(json.dumps(run(url, int(clients), int(requests), encoded, int(k))))


if __name__ == "__main__":
    main()
