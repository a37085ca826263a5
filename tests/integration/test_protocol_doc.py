"""docs/protocol.md's nats-py example, run as written against a cache node: the protocol is
documented well enough for another service to put and get an object without our client."""

from __future__ import annotations

import os
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _example() -> dict:
    text = DOC.read_text()
    code = re.search(r"## Example: put and get.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


async def test_documented_example_puts_and_gets(nc, client, bucket_name) -> None:
    from edgecache.common import wire

    await client.request(wire.CreateBucket(bucket=bucket_name))
    example = _example()
    data = os.urandom(3 * 1024 * 1024 + 99)  # several frames of max_payload
    reply = await example["put_object"](nc, bucket_name, "doc/key", data)
    assert reply["type"] == "object.v1" and reply["size"] == len(data)
    assert await example["get_object"](nc, bucket_name, "doc/key") == data
    _, via_client = await client.get_object_bytes(bucket_name, "doc/key")
    assert via_client == data


def test_the_operations_table_lists_every_operation() -> None:
    from edgecache.common import wire

    rows = re.findall(r"^\| `s3\.([a-z.]+)` \| `([a-z.0-9]+)`", DOC.read_text(), re.M)
    documented = {operation: tag for operation, tag in rows}
    assert len(rows) == len(documented)
    assert documented == {t.operation: t.__struct_config__.tag for t in wire.REQUESTS}
