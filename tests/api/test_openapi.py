"""The OpenAPI document lists every route, with the bearer requirement on the data routes."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitor.api.app import PUBLIC_PATHS
from tests.api.conftest import api_routes


def openapi_path(route_path: str) -> str:
    return route_path.replace(":path}", "}")


@pytest.mark.postgres
def test_openapi_lists_every_route_with_security(app: FastAPI, client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token made by `sentinel-monitor api token`, sent as `Authorization: Bearer TOKEN`.",
    }
    routes = api_routes(app)
    assert routes
    for route in routes:
        path = openapi_path(route.path)
        assert path in document["paths"], path
        for method in route.methods:
            operation = document["paths"][path][method.lower()]
            security = operation.get("security")
            if route.path in PUBLIC_PATHS:
                assert security is None, path
            else:
                assert security == [{"bearer": []}], path
                assert "401" in operation["responses"], path
    assert {openapi_path(route.path) for route in routes} == set(document["paths"])


@pytest.mark.postgres
def test_openapi_documents_response_models(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    for name in ("UserRiskReport", "TopUsers", "FlagDetail", "ExchangeDetail", "OverrideAudit", "Readiness"):
        assert name in schemas, name
    review = document["paths"]["/v1/flags/{flag_id}/review"]["post"]
    assert "403" in review["responses"]


@pytest.mark.postgres
def test_docs_page_is_served(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert "/openapi.json" in response.text
