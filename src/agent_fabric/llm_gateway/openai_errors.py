"""Errors in the shape OpenAI clients parse: {"error": {"message", "type", "code", "param"}}.

The gateway answers in this shape, never in problem JSON, so an agent's OpenAI SDK raises the
matching exception (AuthenticationError, PermissionDeniedError, RateLimitError, ...).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class GatewayError(Exception):
    def __init__(
        self, status: int, message: str, *, type_: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return JSONResponse(self.body(), status_code=self.status, headers={**headers, **self.headers})


def unauthenticated(message: str) -> GatewayError:
    return GatewayError(401, message, type_="invalid_request_error", code="invalid_api_key")


def rate_limited(retry_after: float) -> GatewayError:
    error = GatewayError(
        429,
        f"rate limit for this gateway key exceeded; retry in {retry_after:.2f} s",
        type_="requests",
        code="rate_limit_exceeded",
    )
    error.headers["Retry-After"] = str(max(1, round(retry_after + 0.5)))
    return error


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, type_="invalid_request_error", code="invalid_request", param=param)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"the model {model!r} is not served by this gateway",
        type_="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def budget_exceeded(message: str) -> GatewayError:
    # 402 with OpenAI's "insufficient_quota" type: SDKs surface it as a quota error, not a retry.
    return GatewayError(402, message, type_="insufficient_quota", code="budget_exceeded")


def policy_denied(message: str, code: str = "model_denied") -> GatewayError:
    return GatewayError(403, message, type_="permission_error", code=code, param="model")


def upstream_failed(message: str, status: int = 502) -> GatewayError:
    return GatewayError(status, message, type_="api_error", code="upstream_error")


def from_upstream(upstream: str, status: int, raw: bytes, key: str | None) -> GatewayError:
    """The upstream's error in OpenAI shape. Its own message passes through, except for credential
    refusals (providers quote part of the key in those) and with any trace of the key removed."""
    if status in (401, 403):
        return upstream_failed(f"upstream {upstream!r} refused the gateway's credentials ({status})", 502)
    message = f"upstream {upstream!r} answered {status}"
    try:
        body = orjson.loads(raw)
        detail = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        detail = None
    if isinstance(detail, str):
        if key:
            detail = detail.replace(key, "[redacted]")
        message = f"{message}: {detail[:500]}"
    out = 429 if status == 429 else (400 if status in (400, 404, 413, 422) else 502)
    return GatewayError(
        out, message, type_="api_error" if out == 502 else "invalid_request_error", code="upstream_error"
    )
