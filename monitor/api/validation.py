"""Turn request-validation errors into the `{"detail": "..."}` body that every other API error has.

FastAPI returns them as a list of objects that repeat each invalid input
value. The message built here names each invalid parameter and says what it
must be, but never echoes the value, which can be long or private.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# The message lists at most this many problems and counts the rest.
MAX_PROBLEMS = 5
# Pydantic's own messages are short; this caps one that quotes a long JSON decode error.
MAX_PROBLEM_CHARS = 200

_PLACES = {"query": "query parameter", "path": "path parameter", "header": "header", "cookie": "cookie"}


async def validation_error_response(request: Request, exc: Exception) -> JSONResponse:
    """Return a 422 response whose `detail` is one readable sentence about the invalid request."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": describe_validation_errors(errors)})


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """Describe pydantic errors as `invalid request: query parameter 'limit': Input should be ...; ...`."""
    problems = [_describe(error) for error in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return "invalid request: " + ("; ".join(problems) or "the request does not match the API")


def _describe(error: Mapping[str, Any]) -> str:
    location = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "invalid value"))[:MAX_PROBLEM_CHARS]
    if not location:
        return message
    place, names = location[0], ".".join(location[1:])
    if not names:
        return f"{place}: {message}"
    if place == "body":
        return f"body field '{names}': {message}"
    return f"{_PLACES.get(place, place)} '{names}': {message}"
