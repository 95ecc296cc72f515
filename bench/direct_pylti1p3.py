"""Scenario B of the delivery benchmark: what an app does without Passback.

The app posts each grade itself, synchronously, with the third-party LTI 1.3 library most Python tools use,
pylti1p3 (`AssignmentsGradesService.put_grade` over a `ServiceConnector`). This is the baseline Passback's
asynchronous delivery is compared with, so it is made as fair as a simple app can be:

- **One ServiceConnector per platform, kept for the whole run.** pylti1p3 caches access tokens per connector
  instance (keyed by the scope set, never expired), so this costs one token request per platform; an app
  that built a connector per grade would pay a token round trip per grade.
- **Line items are passed with their `id`.** Without an id, `put_grade` calls `find_or_create_lineitem`,
  which pages through the whole line item container before every score post.
- **No launch needed.** The Registration and the AGS service data (`scope`, `lineitems`) are built by hand
  from what an LMS admin hands over at registration (the simulator's `GET /{platform}/config`), the way a
  worker or cron job without a request context would.
- **What a simple app does on errors.** pylti1p3 raises `LtiServiceException` for any non-2xx answer (429
  included) and never retries. Here a 429 (or Canvas's 403 rate-limit answer) sleeps `Retry-After` (1 s when
  absent) and retries the same grade; a 5xx or a timeout/connection error is retried after a short fixed
  pause; anything else is a permanent failure. The grade keeps its timestamp across retries.
- **Timeouts.** pylti1p3 passes no timeout to requests, so a hung LMS blocks the app until it answers. That is
  the default here too; `read_timeout` mounts an adapter that adds one (what a careful app would do), which
  turns a hang into a retry and, when the LMS had stored the score, into a duplicate.

`python -m bench.direct_pylti1p3` starts a simulated LMS (bench/sim_lms.py) in its own process, sends the
grades and checks that the simulator's stored scores equal the grades sent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from pylti1p3.assignments_grades import AssignmentsGradesService
from pylti1p3.exception import LtiServiceException
from pylti1p3.grade import Grade
from pylti1p3.lineitem import LineItem
from pylti1p3.registration import Registration
from pylti1p3.service_connector import REQUESTS_USER_AGENT, ServiceConnector
from requests.adapters import HTTPAdapter

from bench.sim_lms import SimLms, generate_rsa_key, public_jwk

RATE_LIMITED_403 = "Rate Limit Exceeded"  # Canvas throttles with 403 and this text (canvas-lms request_throttle.rb)
FAILURE_SAMPLES = 10


@dataclass(frozen=True)
class DirectGrade:
    """One grade to deliver. `lineitem` is the line item's number on its platform (1-based)."""

    platform: str
    lineitem: int
    user_id: str
    score_given: float
    score_maximum: float
    timestamp: str  # ISO 8601 with sub-second precision and a zone: when the grade changed


class _FixedKidRegistration(Registration):
    """A Registration whose JWT header carries the kid the app publishes in its JWKS.

    pylti1p3 derives the kid from `set_tool_public_key` (the RFC 7638 thumbprint, recomputed on every token
    request); an app whose JWKS uses its own kid needs this override.
    """

    def __init__(self, kid: str | None) -> None:
        self._fixed_kid = kid

    def get_kid(self) -> str | None:
        return self._fixed_kid


class _TimeoutAdapter(HTTPAdapter):
    """Adds a default timeout to every request: pylti1p3 itself passes none."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = (min(5.0, self._timeout), self._timeout)
        return super().send(request, **kwargs)


class _Platform:
    """What the app keeps per LMS connection: its registration, one connector, one AGS service."""

    def __init__(
        self,
        url: str,
        private_key_pem: str,
        kid: str | None,
        counts: Counter[str],
        read_timeout: float | None,
    ) -> None:
        config = requests.get(f"{url.rstrip('/')}/config", timeout=10).json()  # setup, not timed
        self.token_url: str = config["token_url"]
        self.lineitem_urls: list[str] = config["lineitem_urls"]
        registration = (
            _FixedKidRegistration(kid)
            .set_issuer(config["issuer"])
            .set_client_id(config["client_id"])
            .set_auth_token_url(self.token_url)
            .set_tool_private_key(private_key_pem)
        )
        session = requests.Session()
        session.headers["User-Agent"] = REQUESTS_USER_AGENT  # what pylti1p3 sets on a session it makes itself
        if read_timeout is not None:
            session.mount("http://", _TimeoutAdapter(read_timeout))
            session.mount("https://", _TimeoutAdapter(read_timeout))

        def count(response: requests.Response, *_: Any, **__: Any) -> None:
            kind = "token" if response.url == self.token_url else "service"
            counts["http_requests"] += 1
            counts[f"{kind}_requests"] += 1
            counts[f"status_{response.status_code}"] += 1

        session.hooks["response"].append(count)
        self.connector = ServiceConnector(registration, requests_session=session)
        self.service = AssignmentsGradesService(
            self.connector, {"scope": config["scope"], "lineitems": config["lineitems"]}
        )


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0  # an HTTP-date; a simple app would not parse it


def _is_rate_limited(response: requests.Response) -> bool:
    return response.status_code == 429 or (response.status_code == 403 and RATE_LIMITED_403 in response.text)


def run_direct(
    sim_url_by_platform: Mapping[str, str],
    grades: Sequence[DirectGrade],
    private_key_pem: str,
    kid: str | None,
    *,
    read_timeout: float | None = None,
    max_attempts: int = 20,
    error_pause: float = 0.5,
) -> dict[str, Any]:
    """Send `grades` one after another with pylti1p3, one connector per platform; return the figures.

    `sim_url_by_platform` maps a platform name (DirectGrade.platform) to its base URL (SimLms.platform_url).
    Figures: wall_seconds and grades_per_second (setup excluded), delivered/failed grades, HTTP requests sent
    (answered or timed out) by kind, token_requests, rate_limited (429s and Canvas 403s seen), errors (5xx,
    timeouts, other failures), retries and the seconds spent sleeping before them.
    """
    counts: Counter[str] = Counter()
    platforms = {
        name: _Platform(url, private_key_pem, kid, counts, read_timeout) for name, url in sim_url_by_platform.items()
    }
    failures: list[str] = []
    delivered = retries = 0
    slept = 0.0
    started = time.perf_counter()
    for item in grades:
        platform = platforms[item.platform]
        grade = (
            Grade()
            .set_user_id(item.user_id)
            .set_score_given(item.score_given)
            .set_score_maximum(item.score_maximum)
            .set_timestamp(item.timestamp)
            .set_activity_progress("Completed")
            .set_grading_progress("FullyGraded")
        )
        lineitem = LineItem({"id": platform.lineitem_urls[item.lineitem - 1]})
        for attempt in range(1, max_attempts + 1):
            pause = 0.0
            try:
                platform.service.put_grade(grade, lineitem)
                delivered += 1
                break
            except LtiServiceException as exc:
                response = exc.response
                if _is_rate_limited(response):
                    counts["rate_limited"] += 1
                    pause = _retry_after(response)
                elif response.status_code >= 500:
                    counts["errors"] += 1
                    counts["server_errors"] += 1
                    pause = error_pause
                else:
                    counts["errors"] += 1
                    failures.append(f"{item.platform} {item.user_id}: {exc}"[:300])
                    break
            except requests.RequestException as exc:  # timeouts and connection errors: no response to hook
                counts["errors"] += 1
                counts["http_requests"] += 1
                sent = exc.request.url if exc.request is not None else None
                counts["token_requests" if sent == platform.token_url else "service_requests"] += 1
                counts["timeouts" if isinstance(exc, requests.Timeout) else "connection_errors"] += 1
                pause = error_pause
            if attempt == max_attempts:
                failures.append(f"{item.platform} {item.user_id}: gave up after {max_attempts} attempts")
                break
            retries += 1
            time.sleep(pause)
            slept += pause
    wall = time.perf_counter() - started
    return {
        "grades": len(grades),
        "platforms": len(platforms),
        "delivered": delivered,
        "failed": len(grades) - delivered,
        "wall_seconds": round(wall, 3),
        "grades_per_second": round(delivered / wall, 2) if wall > 0 else None,
        "http_requests": counts["http_requests"],
        "token_requests": counts["token_requests"],
        "service_requests": counts["service_requests"],
        "rate_limited": counts["rate_limited"],
        "errors": counts["errors"],
        "server_errors": counts["server_errors"],
        "timeouts": counts["timeouts"],
        "connection_errors": counts["connection_errors"],
        "retries": retries,
        "retry_sleep_seconds": round(slept, 2),
        "statuses": {k.removeprefix("status_"): v for k, v in sorted(counts.items()) if k.startswith("status_")},
        "failures": failures[:FAILURE_SAMPLES],
    }


def make_grades(
    count: int, platforms: Sequence[str], lineitems: int = 5, seed: int = 0, order: str = "shuffled"
) -> list[DirectGrade]:
    """`count` grades spread evenly over `platforms`, each for a distinct (line item, student) pair.

    `order`: "shuffled" (seeded; grades from many courses arriving mixed), "round-robin" (platforms in turn,
    the kindest to per-platform rate limits) or "grouped" (each platform's grades back to back, the harshest).
    Timestamps are distinct and increasing in generation order, 1 ms apart.
    """
    rng = random.Random(seed)
    base = datetime.now(UTC)
    grades = []
    for i in range(count):
        k = i // len(platforms)
        grades.append(
            DirectGrade(
                platform=platforms[i % len(platforms)],
                lineitem=1 + k % lineitems,
                user_id=f"student-{k // lineitems:04d}",
                score_given=round(rng.uniform(0, 100), 1),
                score_maximum=100.0,
                timestamp=(base + timedelta(milliseconds=i)).isoformat(timespec="milliseconds"),
            )
        )
    if order == "shuffled":
        rng.shuffle(grades)
    elif order == "grouped":
        grades.sort(key=lambda g: platforms.index(g.platform))
    elif order != "round-robin":
        raise ValueError(f"unknown order {order!r}")
    return grades


def check_stored(sim: SimLms, grades: Sequence[DirectGrade]) -> dict[str, Any]:
    """Do the simulator's stored scores equal the grades sent (the newest per pair), in count and values?"""
    expected: dict[tuple[str, str, str], DirectGrade] = {}
    for g in grades:
        key = (g.platform, sim.lineitem_url(g.platform, g.lineitem), g.user_id)
        if key not in expected or datetime.fromisoformat(g.timestamp) >= datetime.fromisoformat(
            expected[key].timestamp
        ):
            expected[key] = g
    stored = {(name, s["lineitem"], s["userId"]): s for name in {g.platform for g in grades} for s in sim.scores(name)}
    mismatched = [
        key
        for key, g in expected.items()
        if key not in stored
        or (stored[key]["scoreGiven"], stored[key]["scoreMaximum"], stored[key]["timestamp"])
        != (g.score_given, g.score_maximum, g.timestamp)
    ]
    return {
        "expected_scores": len(expected),
        "stored_scores": len(stored),
        "mismatched": len(mismatched),
        "unexpected": len(set(stored) - set(expected)),
        "ok": not mismatched and len(stored) == len(expected),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.direct_pylti1p3", description=__doc__.split("\n")[0])
    parser.add_argument("--grades", type=int, default=500)
    parser.add_argument("--platforms", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05, help="the LMS's answer time in seconds")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s per platform (0 = unlimited)")
    parser.add_argument("--burst", type=float, default=None, help="token bucket size (default: the rate)")
    parser.add_argument("--throttle", choices=("429", "canvas"), default="429")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--hang-seconds", type=float, default=3.0)
    parser.add_argument("--read-timeout", type=float, default=None, help="add a timeout (pylti1p3 has none)")
    parser.add_argument("--order", choices=("shuffled", "round-robin", "grouped"), default="shuffled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    key, kid = generate_rsa_key(), "direct-pylti1p3"
    sim = SimLms(
        args.platforms,
        subprocess=True,  # its own process: the sim must not compete for this process's GIL
        latency=args.latency,
        rate=args.rate,
        burst=args.burst,
        throttle=args.throttle,
        fault_rate=args.fault_rate,
        hang_seconds=args.hang_seconds,
        seed=args.seed,
        tool_jwk=public_jwk(key, kid),
    )
    with sim:
        grades = make_grades(args.grades, sim.names, seed=args.seed, order=args.order)
        result = run_direct(
            {name: sim.platform_url(name) for name in sim.names}, grades, key, kid, read_timeout=args.read_timeout
        )
        stats = sim.stats()["total"]
        check = check_stored(sim, grades)
    report = {
        "setup": {k: v for k, v in vars(args).items() if k != "json"},
        "direct": result,
        "sim": stats,
        "check": check,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        r = result
        print(
            f"pylti1p3, sequential: {r['delivered']}/{r['grades']} grades to {r['platforms']} platforms in "
            f"{r['wall_seconds']:.1f} s = {r['grades_per_second']:.1f} grades/s "
            f"(latency {args.latency * 1000:.0f} ms, rate {args.rate or 'unlimited'}/s per platform, "
            f"order {args.order})"
        )
        print(
            f"  HTTP requests {r['http_requests']} (token {r['token_requests']}, AGS {r['service_requests']}); "
            f"rate-limited answers {r['rate_limited']}; errors {r['errors']} (5xx {r['server_errors']}, timeouts "
            f"{r['timeouts']}); retries {r['retries']} sleeping {r['retry_sleep_seconds']} s"
        )
        print(
            f"  sim: score posts {stats['score_posts']}, stored {stats['scores_stored']}, duplicates "
            f"{stats['duplicates']}, token requests {stats['token_requests']}, throttled {stats['rate_limited']}, "
            f"faults {stats['faults']}"
        )
        print(
            f"  check: {check['stored_scores']} stored / {check['expected_scores']} expected, "
            f"{check['mismatched']} mismatched -> {'OK' if check['ok'] else 'MISMATCH'}"
        )
        for failure in r["failures"]:
            print(f"  failed: {failure}")
    return 0 if check["ok"] and result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
