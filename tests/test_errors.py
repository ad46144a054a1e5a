"""One error tree: every deliberate error is in it, drawn in its docstring, with one mapping per use."""

from __future__ import annotations

import ast
import inspect
import re
from http import HTTPStatus
from pathlib import Path

import pytest

from collab import errors
from collab.errors import (
    CollabError,
    ConfigError,
    CorruptDocumentError,
    DatabaseInUseError,
    DocumentTooLargeError,
    ExportError,
    ForbiddenError,
    HistoryError,
    ImportFailed,
    InvalidRoomNameError,
    InvalidUpdateError,
    InvalidUTF8Error,
    LimitError,
    MessageTooBigError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RefusedError,
    ServerBusyError,
    StorageError,
    UnauthenticatedError,
    UnsupportedDataError,
    close_reason_for,
    exit_code_for,
    http_status_for,
    metric_label,
)

PACKAGE = Path(errors.__file__).parent

TREE = [
    item
    for item in vars(errors).values()
    if inspect.isclass(item) and issubclass(item, CollabError) and item.__module__ == errors.__name__
]


def test_every_error_class_of_collab_lives_in_the_tree() -> None:
    """An exception class defined anywhere else would escape the three mappings below."""
    elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and (base.id.endswith(("Error", "Exception")) or base.id == "ImportFailed")
                for base in node.bases
            ):
                elsewhere.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not elsewhere, "define errors in collab/errors.py"


@pytest.mark.parametrize("error_class", TREE, ids=lambda item: item.__name__)
def test_the_docstring_draws_every_class(error_class: type[CollabError]) -> None:
    assert re.search(rf"^ +[│├└─ ]*{error_class.__name__}\s", errors.__doc__ or "", re.MULTILINE)


def test_metric_labels_are_fixed_names_dashboards_can_rely_on() -> None:
    """Pinned: changing one silently breaks every dashboard and alert on `collab_rejected_messages_total`."""
    made = {
        error_class: error_class(4401, "x") if error_class is RefusedError else error_class("x") for error_class in TREE
    }
    assert {error_class.__name__: metric_label(error) for error_class, error in made.items()} == {
        "CollabError": "CollabError",
        "ProtocolError": "ProtocolError",
        "InvalidUTF8Error": "InvalidUTF8Error",
        "InvalidUpdateError": "InvalidUpdateError",
        "MessageTooBigError": "MessageTooBigError",
        "UnsupportedDataError": "UnsupportedDataError",
        "InvalidRoomNameError": "InvalidRoomNameError",
        "AuthError": "invalid",
        "UnauthenticatedError": "invalid",
        "ForbiddenError": "invalid",
        "LimitError": "LimitError",
        "ServerBusyError": "ServerBusyError",
        "RateLimitError": "RateLimitError",
        "DocumentTooLargeError": "DocumentTooLargeError",
        "StorageError": "StorageError",
        "CorruptDocumentError": "CorruptDocumentError",
        "DatabaseInUseError": "DatabaseInUseError",
        "AlreadyExistsError": "AlreadyExistsError",
        "RestoreError": "RestoreError",
        "NotFoundError": "NotFoundError",
        "HistoryError": "HistoryError",
        "ExportError": "ExportError",
        "ImportFailed": "ImportFailed",
        "DeliveryError": "DeliveryError",
        "InvalidSignatureError": "InvalidSignatureError",
        "ClosedError": "ClosedError",
        "RefusedError": "RefusedError",
        "ConfigError": "ConfigError",
    }


def test_a_subclass_keeps_its_label_when_renamed() -> None:
    class Renamed(RateLimitError):
        pass

    assert metric_label(Renamed("x")) == "RateLimitError"


def test_an_auth_error_is_labelled_by_its_reason() -> None:
    assert metric_label(UnauthenticatedError("token expired", "expired")) == "expired"
    assert metric_label(ForbiddenError("token is for a, not b", "forbidden")) == "forbidden"
    assert metric_label(UnauthenticatedError("malformed token")) == "invalid"
    assert metric_label(KeyError("x")) == "unexpected"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad flag"), 2),
        (InvalidRoomNameError("empty"), 2),
        (NotFoundError("no document named 'x'"), 3),
        (HistoryError("no state for then"), 3),
        (DatabaseInUseError("in use by pid 7"), 4),
        (StorageError("disk full"), 5),
        (CorruptDocumentError("row 3 does not decode"), 6),
        (ExportError("cannot write"), 1),
        (ImportFailed("not a Yjs update"), 1),
        (UnauthenticatedError("token expired", "expired"), 1),
        (ServerBusyError("full"), 1),
        (RuntimeError("a bug"), 1),
    ],
    ids=lambda item: type(item).__name__ if isinstance(item, BaseException) else str(item),
)
def test_exit_codes_keep_usage_for_usage(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


def test_every_exit_code_is_documented() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 4, 5, 6, 130, 141}
    table = (errors.__doc__ or "").partition("    0 done")[2]
    for code in codes - {0}:
        assert f"{code} " in table, code


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ProtocolError("x"), HTTPStatus.BAD_REQUEST),
        (InvalidRoomNameError("x"), HTTPStatus.BAD_REQUEST),
        (ConfigError("x"), HTTPStatus.BAD_REQUEST),
        (UnauthenticatedError("x"), HTTPStatus.UNAUTHORIZED),
        (ForbiddenError("x"), HTTPStatus.FORBIDDEN),
        (NotFoundError("x"), HTTPStatus.NOT_FOUND),
        (HistoryError("x"), HTTPStatus.NOT_FOUND),
        (MessageTooBigError("x"), HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        (DocumentTooLargeError("x"), HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
        (RateLimitError("x"), HTTPStatus.TOO_MANY_REQUESTS),
        (ServerBusyError("x"), HTTPStatus.SERVICE_UNAVAILABLE),
        (StorageError("x"), HTTPStatus.SERVICE_UNAVAILABLE),
        (DatabaseInUseError("x"), HTTPStatus.SERVICE_UNAVAILABLE),
        (CorruptDocumentError("x"), HTTPStatus.INTERNAL_SERVER_ERROR),
        (ValueError("x"), HTTPStatus.INTERNAL_SERVER_ERROR),
    ],
    ids=lambda item: type(item).__name__ if isinstance(item, BaseException) else str(item),
)
def test_http_statuses(error: BaseException, status: HTTPStatus) -> None:
    assert http_status_for(error) == status


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ProtocolError("x"), 1002),
        (InvalidUpdateError("x"), 1002),
        (InvalidUTF8Error("x"), 1007),
        (UnsupportedDataError("x"), 1003),
        (MessageTooBigError("x"), 1009),
        (DocumentTooLargeError("x"), 1009),
        (InvalidRoomNameError("x"), 4400),
        (UnauthenticatedError("x"), 4401),
        (ForbiddenError("x"), 4403),
        (RateLimitError("x"), 1008),
        (ServerBusyError("x"), 1013),
        (StorageError("x"), 1011),
        (LimitError("x"), 1011),
        (ValueError("secret detail"), 1011),
    ],
    ids=lambda item: type(item).__name__ if isinstance(item, BaseException) else str(item),
)
def test_close_codes(error: BaseException, code: int) -> None:
    assert close_reason_for(error).code == code


def test_a_close_reason_hides_what_is_not_collabs_own_and_fits_a_control_frame() -> None:
    assert close_reason_for(ValueError("password=hunter2")).reason == "internal error"
    assert close_reason_for(StorageError("/secret/path: disk I/O error")).reason.startswith("document temporarily")
    long = close_reason_for(ProtocolError("é" * 200)).reason
    assert len(long.encode()) <= 123 and long.endswith("...")
