"""LMS adapters: one `LmsAdapter` subclass per LMS, registered here by its `kind`. Adding an LMS is one module
and one line (docs/adapters.md)."""

from __future__ import annotations

from adapters.base import (
    AdapterContext,
    DeliveryReceipt,
    Destination,
    HealthReport,
    LmsAdapter,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from adapters.http import HttpClient
from adapters.lti11_outcomes import Lti11OutcomesAdapter
from adapters.lti13_ags import Lti13AgsAdapter
from adapters.sandbox import SandboxAdapter
from adapters.schoology import SchoologyAdapter

REGISTRY: dict[str, type[LmsAdapter]] = {
    SandboxAdapter.kind: SandboxAdapter,
    Lti13AgsAdapter.kind: Lti13AgsAdapter,
    Lti11OutcomesAdapter.kind: Lti11OutcomesAdapter,
    SchoologyAdapter.kind: SchoologyAdapter,
}

__all__ = [
    "REGISTRY",
    "AdapterContext",
    "DeliveryReceipt",
    "Destination",
    "HealthReport",
    "HttpClient",
    "LmsAdapter",
    "NormalizedGrade",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
]
