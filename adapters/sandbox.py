"""The sandbox LMS: a simulated gradebook served by Passback itself (gateway/sandbox_lms.py), reached over HTTP.

It speaks a deliberately small protocol so app developers can try the whole flow without an LMS:

    PUT {base_url}/courses/{course_id}/items/{item_id}/scores/{student_id}
    Authorization: Bearer {secret}
    Content-Type: application/json
    {"scoreGiven", "scoreMaximum", "comment", "timestamp", "activityProgress", "gradingProgress"}

It answers 200 with the stored entry, or an error status (faults can be injected to rehearse failures).
GET on the same path answers 200 {"entry": {...}} or {"entry": null} (read-back); DELETE removes the entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self
from urllib.parse import quote

from marshmallow import Schema, fields, validate

from adapters import causes
from adapters.answers import classify
from adapters.base import (
    AdapterContext,
    ConfigValue,
    ConnectionDisplay,
    DeliveryReceipt,
    Destination,
    HealthReport,
    LmsAdapter,
    NormalizedGrade,
    PermanentDeliveryError,
)
from adapters.http import HttpClient, json_or_none


class SandboxSettingsSchema(Schema):
    base_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"})
    secret = fields.String(required=True, validate=validate.Length(min=16, max=200))


class SandboxAdapter(LmsAdapter):
    kind: ClassVar[str] = "sandbox"
    settings_schema: ClassVar[type[Schema]] = SandboxSettingsSchema
    secret_settings: ClassVar[frozenset[str]] = frozenset({"secret"})
    needs_lms_identity: ClassVar[bool] = False
    supports_read: ClassVar[bool] = True
    supports_delete: ClassVar[bool] = True
    # One operator-chosen base URL, no allowed_hosts: the sandbox is a local test LMS.
    url_policed: ClassVar[bool] = False

    def __init__(self, base_url: str, secret: str, http: HttpClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.http = http

    @classmethod
    def _from_validated(cls, settings: Mapping[str, Any], http: HttpClient, context: AdapterContext) -> Self:
        return cls(settings["base_url"], settings["secret"], http)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", "Accept": "application/json"}

    def deliver(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt:
        """Write the score pair into the sandbox gradebook; the write is a replace, so repeating it is safe."""
        url = self._score_url(destination, grade)
        payload = {
            "scoreGiven": grade.score_given,
            "scoreMaximum": grade.score_maximum,
            "comment": grade.comment,
            "timestamp": grade.timestamp.isoformat() + "Z",
            "activityProgress": grade.activity_progress,
            "gradingProgress": grade.grading_progress,
        }
        response = self.http.request("PUT", url, json=payload, headers=self._headers())
        answer = json_or_none(response)
        lms_message = str(answer["error"]) if answer and "error" in answer else None
        classify(self.answer_table, response, detail=lms_message)
        if answer is None or "entry" not in answer:
            raise PermanentDeliveryError(
                "sandbox LMS answered 2xx without a stored entry",
                response.status_code,
                response.text[:500],
                cause=causes.UNEXPECTED_ANSWER,
            )
        return DeliveryReceipt(
            lms_status=response.status_code,
            summary=f"stored {grade.score_given:g}/{grade.score_maximum:g} in sandbox gradebook",
            details={"entry": answer["entry"]},
        )

    def read_result(self, destination: Destination) -> float | None:
        """The fraction the sandbox gradebook holds for the student on the item now (a teacher's change included);
        None when it holds no score."""
        response = self.http.request("GET", self._score_url(destination, None), headers=self._headers())
        answer = json_or_none(response)
        classify(self.answer_table, response, detail=str(answer["error"]) if answer and "error" in answer else None)
        if answer is None or "entry" not in answer:
            raise PermanentDeliveryError(
                "sandbox LMS answered 2xx without an entry",
                response.status_code,
                response.text[:500],
                cause=causes.UNEXPECTED_ANSWER,
            )
        entry = answer["entry"]
        if entry is None:
            return None
        try:
            return float(entry["scoreGiven"]) / float(entry["scoreMaximum"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise PermanentDeliveryError(
                f"sandbox LMS answered an entry without a usable score: {exc}",
                response.status_code,
                cause=causes.UNEXPECTED_ANSWER,
            ) from exc

    def delete_result(self, destination: Destination) -> DeliveryReceipt:
        """Remove the student's entry from the sandbox gradebook (deleting twice is fine)."""
        response = self.http.request("DELETE", self._score_url(destination, None), headers=self._headers())
        answer = json_or_none(response)
        classify(self.answer_table, response, detail=str(answer["error"]) if answer and "error" in answer else None)
        return DeliveryReceipt(lms_status=response.status_code, summary="removed from the sandbox gradebook")

    def _score_url(self, destination: Destination, grade: NormalizedGrade | None) -> str:
        item_id = str(destination.data.get("item_id") or destination.assignment_id or (grade and grade.assignment_id))
        return (
            f"{self.base_url}/courses/{quote(destination.course_id, safe='')}"
            f"/items/{quote(item_id, safe='')}/scores/{quote(destination.lms_user_id, safe='')}"
        )

    def probe(self) -> HealthReport:
        """Check that the sandbox LMS answers and accepts the secret."""
        try:
            response = self.http.request("GET", f"{self.base_url}/health", headers=self._headers())
        except Exception as exc:  # transport errors arrive as RetryableDeliveryError
            return HealthReport(False, f"sandbox LMS unreachable: {exc}")
        if response.status_code == 200:
            return HealthReport(True, "sandbox LMS answers and accepts the secret")
        return HealthReport(False, f"sandbox LMS answered HTTP {response.status_code}")

    # --- what the dashboard shows of a connection ----------------------------------------------------------

    @classmethod
    def connection_display(
        cls, settings: Mapping[str, Any], *, public_url: str, connection_id: str
    ) -> ConnectionDisplay:
        return ConnectionDisplay(
            configuration=(ConfigValue("Sandbox gradebook", str(settings.get("base_url", "")) + "/gradebook"),)
        )
