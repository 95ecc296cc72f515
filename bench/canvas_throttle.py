"""Canvas's rate limit (issue 13, item 8): the throughput Passback reaches against a leaky bucket that refuses
with Canvas's 403 "Rate Limit Exceeded", as a ratio of what the bucket allows.

The LMS is tests/fakes/canvas_bucket.py: a leaky bucket draining `outflow` units a second, each accepted
request costing `cost` units, so it sustains `limit = outflow / cost` requests a second; while full it answers
Canvas's 403 (text/plain, `X-Rate-Limit-Remaining: 0.0`, no Retry-After). The bucket starts full (another
tool on the same developer key has just drained it), so the first request is refused and no initial burst
flatters the figure.

Passback's side is what every delivery sends through: `ThrottledHttpClient` over one shared limiter, with
the connection's concurrency (`--threads`) sending at once and the connection's own request rate set above
what the LMS allows (`--passback-rate`), as when a district keeps the default. A refused request counts as
a delivery attempt that will be retried; the threads go on with the next one, as workers do.

Printed: accepted requests a second / the bucket's limit (`ratio`, aim >= 0.6), the 403s, and the longest
run of 403s in a row (a "storm" is 3 or more in a row), overall and after the first second (the threads'
first requests meet a full bucket whose refill is not known yet; aim: no storm after that).

    python -m bench.canvas_throttle [--seconds 15] [--json bench/results/canvas_throttle.json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.base import RetryableDeliveryError  # noqa: E402
from adapters.http import BucketViews, HttpClient, Throttle, ThrottledHttpClient  # noqa: E402
from gateway.throttle import LocalLimiter  # noqa: E402
from tests.fakes.canvas_bucket import CanvasBucketLms  # noqa: E402

STORM = 3
# The first second is learning: the threads' first requests all meet a full bucket whose refill is unknown.
WARMUP_SECONDS = 1.0


def run(
    *,
    seconds: float,
    threads: int,
    passback_rate: float,
    hwm: float,
    outflow: float,
    cost: float,
    max_pause: float,
) -> dict[str, Any]:
    limiter = LocalLimiter()
    throttle = Throttle(
        key=f"canvas-bench-{secrets.token_hex(4)}",
        rate=passback_rate,
        burst=max(1, int(passback_rate)),
        default_pause=max_pause,
    )
    http = HttpClient(2.0, 5.0, deadline=10.0)
    # The senders share what they learn of the LMS's bucket, as the adapter factory's clients of one connection do.
    buckets = BucketViews()
    stop = threading.Event()
    throttled_by_passback = [0]
    lock = threading.Lock()

    def sender(url: str) -> None:
        client = ThrottledHttpClient(http, limiter, throttle, buckets=buckets)
        while not stop.is_set():
            try:
                client.request("POST", url, json={"scoreGiven": 1})
            except RetryableDeliveryError:
                # A wait longer than max_wait: the delivery is rescheduled, the worker moves on.
                with lock:
                    throttled_by_passback[0] += 1

    with CanvasBucketLms(hwm=hwm, outflow=outflow, cost=cost, start_full=True) as lms:
        workers = [threading.Thread(target=sender, args=(lms.url,), daemon=True) for _ in range(threads)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        time.sleep(seconds)
        stop.set()
        for worker in workers:
            worker.join(15)
        elapsed = time.monotonic() - started
        counts = lms.counts()
        longest = lms.longest_refusal_run()
        storms = _storms(lms.log)
        settled = [(t, status) for t, status in lms.log if t - lms.log[0][0] >= WARMUP_SECONDS]
        limit = lms.limit
    accepted_per_second = counts["accepted"] / elapsed
    return {
        "seconds": round(elapsed, 2),
        "limit_per_second": limit,
        "accepted": counts["accepted"],
        "accepted_per_second": round(accepted_per_second, 2),
        "ratio": round(accepted_per_second / limit, 3),
        "refused_403": counts["refused"],
        "longest_403_run": longest,
        "storms": storms,
        "refused_403_after_warmup": sum(1 for _, status in settled if status == 403),
        "storms_after_warmup": _storms(settled),
        "rescheduled_by_passback": throttled_by_passback[0],
        "settings": {
            "threads": threads,
            "passback_rate": passback_rate,
            "hwm": hwm,
            "outflow": outflow,
            "cost": cost,
            "max_pause": max_pause,
        },
    }


def _storms(log: list[tuple[float, int]]) -> int:
    """Runs of STORM or more 403s in a row."""
    storms = run = 0
    for _, status in log:
        if status == 403:
            run += 1
            if run == STORM:
                storms += 1
        else:
            run = 0
    return storms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=4, help="the connection's concurrent deliveries")
    parser.add_argument("--passback-rate", type=float, default=50.0, help="Passback's own rate for the connection")
    parser.add_argument("--hwm", type=float, default=60.0, help="bucket size (Canvas: 600; smaller runs quicker)")
    parser.add_argument("--outflow", type=float, default=20.0, help="units the bucket drains a second")
    parser.add_argument("--cost", type=float, default=1.0, help="units one request costs")
    parser.add_argument("--max-pause", type=float, default=10.0, help="GATEWAY_CONNECTION_PAUSE_SECONDS")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    report = run(
        seconds=args.seconds,
        threads=args.threads,
        passback_rate=args.passback_rate,
        hwm=args.hwm,
        outflow=args.outflow,
        cost=args.cost,
        max_pause=args.max_pause,
    )
    print(
        f"canvas throttle: {report['accepted_per_second']}/s accepted of the bucket's "
        f"{report['limit_per_second']:g}/s: ratio {report['ratio']:.2f} (aim >= 0.6); "
        f"{report['refused_403']} 403s, longest run {report['longest_403_run']}, "
        f"storms (>= {STORM} in a row) {report['storms']}; after the first {WARMUP_SECONDS:g} s: "
        f"{report['refused_403_after_warmup']} 403s, {report['storms_after_warmup']} storms"
    )
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
