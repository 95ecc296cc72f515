"""LMS adapters: one module per LMS, registered here by name. Adding an LMS is one module and one line."""

from __future__ import annotations

from adapters.base import (
    DeliveryReceipt,
    Destination,
    GradeAdapter,
    HealthReport,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from adapters.http import HttpClient
from adapters.sandbox import SandboxAdapter

REGISTRY: dict[str, type[GradeAdapter]] = {
    SandboxAdapter.kind: SandboxAdapter,
}

__all__ = [
    "REGISTRY",
    "DeliveryReceipt",
    "Destination",
    "GradeAdapter",
    "HealthReport",
    "HttpClient",
    "NormalizedGrade",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
]
