"""LTI 1.3 and 1.1 launches, each one unit of work: validate, record the launch, sign the student in, commit,
then wake delivery for the grades the launch released (they waited for it) or routed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.crypto import SecretBox
from gateway.models import App, LaunchState, utcnow
from gateway.services import deep_linking, lti11_launch, lti13_launch, signin
from gateway.services.errors import ServiceError
from gateway.services.lti13_launch import PlatformKeys, RecordedLaunch
from gateway.services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class LaunchOutcome:
    """Where the browser goes next: the app's sign-in (`sign_in_url`) or the assignment picker (`picker_id`)."""

    sign_in_url: str | None = None
    picker_id: str | None = None
    summary: str = ""


@dataclass(frozen=True)
class PickerAnswer:
    """The deep linking response to post to the platform, and the origins that may frame and receive it."""

    return_url: str
    token: str
    origins: list[str]


def begin_login(uow: UnitOfWork, box: SecretBox, params: Mapping[str, str], launch_url: str) -> str:
    """OIDC third-party initiated login: remember state and nonce; returns the platform URL to send the browser."""
    with uow:
        target = lti13_launch.begin_login(uow.session, box, params, launch_url)
        uow.commit()
        return target


def answer_picker(
    uow: UnitOfWork, box: SecretBox, picker_id: str, choices: Iterable[str], launch_url: str
) -> PickerAnswer:
    """The teacher's picks become the signed deep linking response; the picker is spent with it."""
    with uow:
        return_url, token = deep_linking.respond(uow.session, box, picker_id, choices, launch_url)
        origins = deep_linking.platform_origins(uow.session, box, picker_id)
        uow.commit()
        return PickerAnswer(return_url, token, origins)


def launch_lti13(
    uow: UnitOfWork, box: SecretBox, keys: PlatformKeys, id_token: str, state: str, launch_url: str
) -> LaunchOutcome:
    """Validate the id_token; a resource link launch then signs the student into the app, a deep linking request
    opens the assignment picker. A refused launch still spends its state, so the token cannot be tried again."""
    with uow:
        try:
            result = lti13_launch.validate_launch(uow.session, box, keys, id_token, state, launch_url=launch_url)
            summary = lti13_launch.safe_summary(result.claims)
            if result.message_type == lti13_launch.DEEP_LINKING:
                picker = deep_linking.open_picker(uow.session, result)
                uow.commit()
                return LaunchOutcome(picker_id=picker.id, summary=summary)
            target = _sign_in(uow, lti13_launch.record_resource_link_launch(uow.session, result))
        except ServiceError:
            uow.rollback()
            _spend_state(uow, state)
            raise
        uow.commit()
        return LaunchOutcome(sign_in_url=target, summary=summary)


def launch_lti11(
    uow: UnitOfWork, box: SecretBox, url: str, body: str, content_type: str, params: Mapping[str, str]
) -> LaunchOutcome:
    """Verify the signed form (its URL included), record the launch, and sign the student into the app."""
    with uow:
        connection, settings = lti11_launch.verify_launch(uow.session, box, url, body, content_type)
        target = _sign_in(uow, lti11_launch.record_launch(uow.session, connection, settings, params))
        uow.commit()
        return LaunchOutcome(
            sign_in_url=target, summary=f"consumer {settings['consumer_key']}, user {params.get('user_id')}"
        )


def _sign_in(uow: UnitOfWork, recorded: RecordedLaunch) -> str:
    uow.nudge_if(recorded.released, {recorded.lms_connection_id})
    # Routing looks at every destination of the student's grades: wake delivery everywhere.
    uow.nudge_if(recorded.routed)
    app = uow.session.get(App, recorded.assignment.app_id)
    assert app is not None
    return signin.sign_in_redirect(
        uow.session, app, recorded.user.district_id, recorded.user.id, recorded.assignment.external_id
    )


def _spend_state(uow: UnitOfWork, state: str) -> None:
    if not state:
        return
    login_state = uow.session.get(LaunchState, state)
    if login_state is not None and login_state.used_at is None:
        login_state.used_at = utcnow()
    uow.commit()
