"""The JSON HTTP API: the read side that the web page's document list uses.

    GET /api/docs    {"documents": [{"name", "size", "log_length", "created_at", "updated_at"}, ...]}

Times are ISO 8601 in UTC; sizes are bytes stored.
"""

from __future__ import annotations

from datetime import UTC, datetime

from websockets.http11 import Response

from .http import HttpRequest, Router, json_response
from .store import DocumentInfo, Store

__all__ = ["document_json", "install_api"]


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def document_json(info: DocumentInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "size": info.size,
        "log_length": info.log_length,
        "created_at": iso(info.created_at),
        "updated_at": iso(info.updated_at),
    }


def install_api(router: Router, store: Store) -> None:
    """Register the API's routes on `router`."""

    async def list_documents(request: HttpRequest) -> Response:
        return json_response({"documents": [document_json(info) for info in await store.documents()]})

    router.route("/api/docs", list_documents)
