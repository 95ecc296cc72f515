"""What a district shares with an app, read with the district-app token: GET /v1/users, GET /v1/courses,
GET /v1/courses/{course_id}/enrollments."""

from __future__ import annotations

from flask import Response, jsonify
from marshmallow import fields

from gateway.api import api
from gateway.api.common import current_principal, load_query
from gateway.contract import Reply, operation
from gateway.extensions import db
from gateway.services.app_directory import list_courses, list_enrollments, list_users
from schemas.directory import (
    CourseListQuerySchema,
    CourseListResponseSchema,
    EnrollmentListQuerySchema,
    EnrollmentListResponseSchema,
    UserListQuerySchema,
    UserListResponseSchema,
)
from schemas.errors import ErrorSchema

COURSE_ID = {"course_id": fields.String(metadata={"description": "A course's `id`, as GET /v1/courses gives it."})}
USER_TOKEN_REFUSED = Reply(
    403,
    "Not the district-app token (a user's sign-in token may not look anyone up), or it lacks roster:read.",
    ErrorSchema,
)


@api.get("/users")
@operation(
    "listUsers",
    tag="directory",
    summary="The district's users this app may see, oldest first, filtered, cursor-paged",
    description="A user is shown to an app when enrolled in a course where one of the app's assignments is "
    "placed. Each comes with the id every LMS of the district knows them by.",
    query=UserListQuerySchema,
    replies=Reply(200, "A page of users; `nextCursor` fetches the next one.", UserListResponseSchema),
    errors=(USER_TOKEN_REFUSED,),
)
def list_directory_users() -> Response:
    principal = current_principal()
    query = load_query()
    session = db.session()
    page = list_users(session, principal, query)
    payload = UserListResponseSchema().dump({"users": page.items, "next_cursor": page.next_cursor})
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)


@api.get("/courses")
@operation(
    "listCourses",
    tag="directory",
    summary="Courses where this app's assignments are placed, with how many students Passback can deliver to",
    query=CourseListQuerySchema,
    replies=Reply(200, "A page of courses, in the order they were first placed.", CourseListResponseSchema),
    errors=(USER_TOKEN_REFUSED,),
)
def list_directory_courses() -> Response:
    principal = current_principal()
    query = load_query()
    session = db.session()
    page = list_courses(session, principal, query)
    payload = CourseListResponseSchema().dump({"courses": page.items, "next_cursor": page.next_cursor})
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)


@api.get("/courses/<course_id>/enrollments")
@operation(
    "listCourseEnrollments",
    tag="directory",
    summary="A course's enrollments, each with what a grade posted now would do",
    path=COURSE_ID,
    query=EnrollmentListQuerySchema,
    replies=Reply(200, "A page of enrollments; `nextCursor` fetches the next one.", EnrollmentListResponseSchema),
    errors=(
        USER_TOKEN_REFUSED,
        Reply(
            404,
            "No course with this id where this app's assignments are placed (code `course_not_found`).",
            ErrorSchema,
        ),
    ),
)
def list_directory_enrollments(course_id: str) -> Response:
    principal = current_principal()
    query = load_query()
    session = db.session()
    page = list_enrollments(session, principal, course_id, query)
    payload = EnrollmentListResponseSchema().dump({"enrollments": page.items, "next_cursor": page.next_cursor})
    session.commit()  # keeps authenticate's last-used touch of the token (teardown rolls back)
    return jsonify(payload)
