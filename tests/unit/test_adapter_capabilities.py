"""The adapter boundary: every adapter is an LmsAdapter that declares its capabilities, and the gateway reads those
declarations instead of probing adapters with hasattr/getattr."""

from __future__ import annotations

import ast
import inspect
from datetime import datetime
from pathlib import Path

import pytest

from adapters import REGISTRY, causes
from adapters.base import (
    ConnectionDisplay,
    DeliveryReceipt,
    Destination,
    HealthReport,
    LmsAdapter,
    NormalizedGrade,
    PermanentDeliveryError,
    RetryableDeliveryError,
)

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

# Every attribute and method LmsAdapter declares (what a probe of an adapter would name).
CAPABILITIES = {name for name in vars(LmsAdapter) if not name.startswith("__") and name != "_abc_impl"} | set(
    LmsAdapter.__annotations__
)

# Capability flag -> the method that flag enables.
SUPPORTS = {
    "supports_read": "read_result",
    "supports_delete": "delete_result",
    "supports_roster": "memberships",
    "caches_access_tokens": "token_cache_keys",
}


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_every_registered_adapter_subclasses_lmsadapter_under_its_kind(key: str) -> None:
    adapter_cls = REGISTRY[key]
    assert issubclass(adapter_cls, LmsAdapter)
    assert adapter_cls.kind == key
    assert not inspect.isabstract(adapter_cls)


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_supports_flags_match_the_methods_an_adapter_overrides(key: str) -> None:
    adapter_cls = REGISTRY[key]
    for flag, method in SUPPORTS.items():
        overridden = inspect.getattr_static(adapter_cls, method) is not inspect.getattr_static(LmsAdapter, method)
        assert getattr(adapter_cls, flag) is overridden, f"{key}: {flag} disagrees with its {method}"


def _probes(path: Path) -> list[str]:
    """hasattr/getattr calls in one module whose attribute name (a string literal) is an adapter capability."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in {"hasattr", "getattr"} or len(node.args) < 2:
            continue
        name = node.args[1]
        if isinstance(name, ast.Constant) and name.value in CAPABILITIES:
            found.append(f"{path}:{node.lineno} {node.func.id}(…, {name.value!r})")
    return found


def test_no_gateway_module_probes_an_adapter_with_hasattr_or_getattr() -> None:
    assert {"kind", "needs_lms_identity", "max_batch", "delete_result", "read_result", "deliver"} <= CAPABILITIES
    probes = [probe for path in sorted(GATEWAY.rglob("*.py")) for probe in _probes(path)]
    assert probes == []


def test_the_probe_scan_finds_a_probe(tmp_path: Path) -> None:
    # The scan itself must catch the pattern it forbids (else the test above could never fail).
    module = tmp_path / "probing.py"
    module.write_text('ok = hasattr(adapter, "supports_delete") or getattr(adapter, "max_batch", 1)\n')
    assert len(_probes(module)) == 2


class _Flaky(LmsAdapter):
    """Refuses the student named "bad", retryably the student named "later"; stores everyone else."""

    kind = "flaky"
    url_policed = False

    def deliver(self, grade: NormalizedGrade, destination: Destination) -> DeliveryReceipt:
        if destination.lms_user_id == "bad":
            raise PermanentDeliveryError("no such student", 404, cause=causes.NOT_ENROLLED)
        if destination.lms_user_id == "later":
            raise RetryableDeliveryError("busy", retry_after=5, lms_status=503, cause=causes.LMS_ERROR)
        return DeliveryReceipt(200, f"stored for {destination.lms_user_id}")

    def probe(self) -> HealthReport:
        return HealthReport(True, "ok")


def _item(user: str) -> tuple[NormalizedGrade, Destination]:
    grade = NormalizedGrade("g-" + user, 1, user, "a1", "A1", 0.5, 5.0, 10.0, datetime(2026, 1, 1))
    return grade, Destination("p1", "c1", None, {}, user)


def test_default_deliver_batch_isolates_each_items_failure() -> None:
    adapter = _Flaky.from_settings({}, None)  # type: ignore[arg-type]
    outcomes = adapter.deliver_batch([_item("ann"), _item("bad"), _item("bob"), _item("later")])
    assert [type(o).__name__ for o in outcomes] == [
        "DeliveryReceipt",
        "PermanentDeliveryError",
        "DeliveryReceipt",
        "RetryableDeliveryError",
    ]
    assert isinstance(outcomes[0], DeliveryReceipt) and outcomes[0].summary == "stored for ann"
    assert isinstance(outcomes[2], DeliveryReceipt) and outcomes[2].summary == "stored for bob"
    assert isinstance(outcomes[1], PermanentDeliveryError) and outcomes[1].lms_status == 404


def test_defaults_of_an_adapter_that_declares_nothing() -> None:
    adapter = _Flaky.from_settings({}, None)  # type: ignore[arg-type]
    assert (adapter.max_batch, _Flaky.batch_key(_item("ann")[1])) == (1, None)
    assert not (_Flaky.needs_lms_identity or _Flaky.needs_launch_data or _Flaky.needs_discovery({}))
    assert not (_Flaky.supports_read or _Flaky.supports_delete or _Flaky.supports_roster)
    assert _Flaky.registration_key({}) is None and _Flaky.roster_source({}, "s1") is None
    assert _Flaky.placement_destination("c1", None, {"x": 1}) == ("c1", None, {"x": 1})
    assert _Flaky.connection_display({}, public_url="https://p.example", connection_id="c1") == ConnectionDisplay()
    assert not _Flaky.caches_access_tokens
    with pytest.raises(NotImplementedError):
        adapter.read_result(_item("ann")[1])
    with pytest.raises(NotImplementedError):
        adapter.delete_result(_item("ann")[1])
    with pytest.raises(NotImplementedError):
        adapter.memberships("s1")
    with pytest.raises(NotImplementedError):
        _Flaky.token_cache_keys({})
