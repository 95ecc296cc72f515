"""Assertions shared by the HTTP tests."""

from __future__ import annotations

import json
from typing import Any

import requests


def strict_json(response: requests.Response) -> Any:
    """The body parsed as real JSON: NaN and Infinity (which Python would accept) fail the test."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"response body is not JSON: it contains {name}")

    return json.loads(response.text, parse_constant=refuse)


def assert_error(response: requests.Response, status: int, code: str | None = None, field: str | None = None) -> dict:
    """The one error shape {"error": {"code", "message", "fields"?, "requestId"}}, with `field` named when given
    and `requestId` the answer's X-Request-Id."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = strict_json(response)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "fields", "requestId"}, error
    assert error["requestId"] == response.headers["X-Request-Id"], error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if field is not None:
        assert field in error.get("fields", {}), error
    return error
