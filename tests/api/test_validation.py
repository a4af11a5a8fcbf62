"""Request-validation errors return 422 with one readable `detail` string that never repeats the input."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from monitor.api.validation import MAX_PROBLEMS, describe_validation_errors
from tests.api.conftest import REVIEWER_TOKEN, VIEWER_TOKEN, auth


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/users/top?limit=0", "invalid request: query parameter 'limit': Input should be greater than or equal to 1"),
        ("/v1/flags?status=closed", "query parameter 'status': Input should be 'open'"),
        ("/v1/flags/abc", "path parameter 'flag_id': Input should be a valid integer"),
        ("/v1/overrides/audit?since=yesterday", "query parameter 'since'"),
    ],
)
def test_invalid_query_detail_is_string(client: TestClient, path: str, message: str) -> None:
    response = client.get(path, headers=auth(VIEWER_TOKEN))

    assert response.status_code == 422
    body = response.json()
    assert list(body) == ["detail"]
    assert isinstance(body["detail"], str)
    assert message in body["detail"]


@pytest.mark.postgres
def test_invalid_body_not_echoed(client: TestClient) -> None:
    secret_note = "private-note-" + "x" * 4000
    response = client.post("/v1/flags/1/review", json={"status": "resolved", "note": secret_note}, headers=auth(REVIEWER_TOKEN))

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "body field 'note': String should have at most 4000 characters" in detail
    assert "private-note" not in detail


@pytest.mark.postgres
def test_malformed_json_body_is_string(client: TestClient) -> None:
    response = client.post(
        "/v1/flags/1/review", content=b"{not json", headers={**auth(REVIEWER_TOKEN), "Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid request: body")


@pytest.mark.postgres
def test_openapi_documents_string_detail(client: TestClient) -> None:
    document = client.get("/openapi.json").json()

    top = document["paths"]["/v1/users/top"]["get"]["responses"]["422"]
    assert top["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_describe_counts_problems_over_limit() -> None:
    errors = [{"loc": ("query", f"p{index}"), "msg": "Field required"} for index in range(MAX_PROBLEMS + 2)]

    message = describe_validation_errors(errors)

    assert message.startswith("invalid request: query parameter 'p0': Field required; ")
    assert message.endswith("; and 2 more")
    assert f"'p{MAX_PROBLEMS}'" not in message
