"""bench/sim_lms.py checks what a platform must check, throttles and injects faults; scenario B lands its grades.

The benchmark's conclusions rest on the simulator refusing what a real LMS refuses, so these run it for real
(in-process, no latency) and stay fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bench.direct_pylti1p3 import check_stored, make_grades, run_direct
from bench.sim_lms import (
    ASSERTION_TYPE,
    MEDIA_SCORE,
    SCOPE_SCORE,
    SimLms,
    generate_rsa_key,
    public_jwk,
    sign_assertion,
)

KID = "test-key"


@pytest.fixture(scope="module")
def key() -> str:
    return generate_rsa_key()


@pytest.fixture
def sim(key: str) -> Iterator[SimLms]:
    with SimLms(2, latency=0.0, tool_jwk=public_jwk(key, KID)) as running:
        yield running


def token_response(sim: SimLms, name: str, key: str, kid: str | None = KID, **claims: Any) -> requests.Response:
    assertion = sign_assertion(key, kid, sim.spec(name).client_id, sim.token_url(name), **claims)
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": SCOPE_SCORE,
    }
    return requests.post(sim.token_url(name), data=form, timeout=5)


def post_score(sim: SimLms, name: str, token: str, content_type: str = MEDIA_SCORE, **body: Any) -> requests.Response:
    score = {
        "userId": "u1",
        "scoreGiven": 7,
        "scoreMaximum": 10,
        "activityProgress": "Completed",
        "gradingProgress": "FullyGraded",
        "timestamp": "2025-01-01T10:00:00.000+00:00",
        **body,
    }
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    return requests.post(f"{sim.lineitem_url(name, 1)}/scores", data=json.dumps(score), headers=headers, timeout=5)


def test_token_endpoint_verifies_the_client_assertion(sim: SimLms, key: str) -> None:
    name, other = sim.names
    good = token_response(sim, name, key)
    assert good.status_code == 200
    assert good.json()["token_type"] == "Bearer" and good.json()["expires_in"] == 3600

    replayed = token_response(sim, name, key, jti="same")
    assert replayed.status_code == 200
    refusals = {
        "jti replayed": token_response(sim, name, key, jti="same"),
        "wrong aud": token_response(sim, name, key, aud=sim.token_url(other)),
        "iss of another platform": token_response(sim, name, key, iss=sim.spec(other).client_id),
        "expired": token_response(sim, name, key, exp=1),
        "iat too old": token_response(sim, name, key, iat=1),
        "unknown kid": token_response(sim, name, key, kid="another"),
        "another key": token_response(sim, name, generate_rsa_key()),
    }
    for reason, response in refusals.items():
        assert response.status_code == 401, reason
        assert response.json()["error"] == "invalid_client", reason
    stats = sim.stats()["platforms"][name]
    assert (stats["token_requests"], stats["tokens_issued"], stats["assertion_errors"]) == (9, 2, 7)


def test_scores_need_the_media_type_and_a_token_of_this_platform(sim: SimLms, key: str) -> None:
    name, other = sim.names
    token = token_response(sim, name, key).json()["access_token"]
    assert post_score(sim, name, token, content_type="application/json").status_code == 415
    assert post_score(sim, name, "not-a-token").status_code == 401
    assert post_score(sim, other, token).status_code == 401
    assert post_score(sim, name, token, scoreGiven=-1).status_code == 400

    assert post_score(sim, name, token).status_code == 200
    assert post_score(sim, name, token).status_code == 200  # the same grade again: a duplicate
    older = post_score(sim, name, token, scoreGiven=3, timestamp="2025-01-01T09:00:00.000+00:00")
    assert older.status_code == 400 and "before last updated timestamp" in older.text
    assert post_score(sim, name, token, scoreGiven=9, timestamp="2025-01-01T11:00:00.000Z").status_code == 200

    [stored] = sim.scores(name)
    assert (stored["scoreGiven"], stored["lineitem"]) == (9, sim.lineitem_url(name, 1))
    stats = sim.stats()["platforms"][name]
    assert stats["score_posts"] == 7 and stats["scores_stored"] == 3  # the post to `other` counts there
    assert (stats["duplicates"], stats["stale"], stats["unauthorized"], stats["bad_requests"]) == (1, 1, 1, 2)
    assert sim.stats()["platforms"][other]["unauthorized"] == 1


def test_token_bucket_answers_429_with_retry_after(key: str) -> None:
    with SimLms(1, latency=0.0, rate=0.5, burst=3, tool_jwk=public_jwk(key, KID)) as sim:
        [name] = sim.names
        token = token_response(sim, name, key)
        assert token.headers["X-Rate-Limit-Remaining"] == "2.0"
        answers = [post_score(sim, name, token.json()["access_token"]) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].headers["Retry-After"] == "1"
        assert sim.stats()["platforms"][name]["rate_limited"] == 1


def test_canvas_style_throttling_is_a_403_without_retry_after(key: str) -> None:
    with SimLms(1, latency=0.0, rate=0.5, burst=1, throttle="canvas", tool_jwk=public_jwk(key, KID)) as sim:
        [name] = sim.names
        token_response(sim, name, key)
        refused = token_response(sim, name, key)
        assert refused.status_code == 403 and refused.text == "403 Forbidden (Rate Limit Exceeded)\n"
        assert "Retry-After" not in refused.headers and refused.headers["X-Rate-Limit-Remaining"] == "0.0"


def test_faults_answer_500_and_are_counted(key: str) -> None:
    with SimLms(1, latency=0.0, fault_rate=1.0, hang_share=0.0, tool_jwk=public_jwk(key, KID)) as sim:
        [name] = sim.names
        assert token_response(sim, name, key).status_code == 500
    stats = sim.stats()["platforms"][name]  # still readable once stopped
    assert (stats["faults"], stats["faults_500"], stats["tokens_issued"]) == (1, 1, 0)


def test_scenario_b_delivers_every_grade_with_pylti1p3(sim: SimLms, key: str) -> None:
    grades = make_grades(12, sim.names)
    result = run_direct({n: sim.platform_url(n) for n in sim.names}, grades, key, KID)
    assert (result["delivered"], result["failed"], result["token_requests"]) == (12, 0, 2)
    assert check_stored(sim, grades)["ok"]
    assert sim.stats()["total"]["score_posts"] == 12
