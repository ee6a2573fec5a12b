"""boto3 error helpers (botocore ships no type hints, so its import is confined here)."""

from __future__ import annotations

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

__all__ = ["ClientError", "error_code"]


def error_code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code
