"""docs/compatibility.md is true: its *supported*/*partial* rows are exactly the actions the
gateway serves (``handlers.ROUTES``), every S3 operation of botocore's model has a row, and
each *not* row routes to ``NotImplemented`` (501) — or its notes name the action that
answers it instead — when sent the way botocore sends it."""

from __future__ import annotations

import re
from pathlib import Path

import botocore.session
import pytest

from edgecache.gateway.handlers import ROUTES
from edgecache.gateway.operations import route

DOC = Path(__file__).parents[2] / "docs" / "compatibility.md"
ROW = re.compile(r"^\| (\w+) \| (supported|partial|not) \| (.*) \|$")
ERROR_ACTIONS = {"NotImplemented", "MethodNotAllowed"}  # the gateway's answers, not S3 actions
S3_MODEL = botocore.session.get_session().get_service_model("s3")


def _rows() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            name, status, notes = match.groups()
            assert name not in rows, f"{name} has two rows"
            rows[name] = (status, notes)
    return rows


ROWS = _rows()


def test_served_rows_are_exactly_the_gateways_routes() -> None:
    served = {name for name, (status, _) in ROWS.items() if status != "not"}
    routes = set(ROUTES) - ERROR_ACTIONS
    assert routes - served == set(), "served but documented as not served (or missing)"
    assert served - routes == set(), "documented as served but not routed"


def test_every_s3_operation_has_a_row() -> None:
    assert set(S3_MODEL.operation_names) - set(ROWS) == set()
    assert len(ROWS) >= 60


def _request(name: str) -> tuple[str, bytes, bytes, bool]:
    """Method, path, query and whether ``x-amz-copy-source`` is sent, as botocore sends
    operation ``name`` (its required query parameters filled with ``1``)."""
    model = S3_MODEL.operation_model(name)
    path, _, literal = model.http["requestUri"].partition("?")
    path = path.replace("{Bucket}", "b").replace("{Key+}", "k")
    query = [p for p in literal.split("&") if p]
    copy_source = False
    shape = model.input_shape
    for member in shape.required_members if shape else ():
        where = shape.members[member].serialization
        if where.get("location") == "querystring":
            query.append(f"{where['name']}=1")
        elif where.get("name") == "x-amz-copy-source":
            copy_source = True
    return model.http["method"], path.encode(), "&".join(query).encode(), copy_source


@pytest.mark.parametrize("name", S3_MODEL.operation_names)
def test_each_row_says_how_the_operation_is_answered(name: str) -> None:
    method, path, query, copy_source = _request(name)
    routed = route(method, path, query, copy_source=copy_source).name
    status, notes = ROWS[name]
    if status != "not":
        assert routed == name
    else:
        assert routed in ERROR_ACTIONS or f"`{routed}`" in notes, (
            f"{name} is documented as not served, but {method} {path!r}?{query!r} routes to {routed}"
        )
