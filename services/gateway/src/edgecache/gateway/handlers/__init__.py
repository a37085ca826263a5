"""One coroutine per S3 operation: read the request through the :class:`Exchange`, call the
cache nodes through :class:`~edgecache.common.client.EdgecacheClient`, build the response.

The handlers live by what they act on (:mod:`.buckets`, :mod:`.listings`, :mod:`.objects`,
:mod:`.uploads`, :mod:`.copies`, :mod:`.tags`); each registers itself in the route table
(:mod:`.routes`) when its module is imported, which this package does. :data:`HANDLERS`
maps the operation names :func:`~edgecache.gateway.operations.route` returns to them.
"""

from __future__ import annotations

from edgecache.gateway.handlers import buckets, copies, listings, objects, tags, uploads
from edgecache.gateway.handlers.routes import ROUTES, Handler, Route, serves

__all__ = ["HANDLERS", "ROUTES", "Handler", "Route", "serves"]

_REGISTERED = (buckets, copies, listings, objects, tags, uploads)  # imported for their routes

#: The handler of every S3 action :func:`~edgecache.gateway.operations.route` names.
HANDLERS: dict[str, Handler] = {action: r.handler for action, r in ROUTES.items()}
