"""Who may do what on the hub's nats-server: each site's leaf node connection (its nkey),
the hub federator and the operator.

A site's leaf connection is a user of the hub's ``authorization {}`` block, identified by
its nkey; its permissions are what crosses the link (``publish``: from the site to the
hub; ``subscribe``: from the hub to the site): only

- out: the site's own heartbeat (``edgecache.fed.heartbeat.<site>``: no site can send
  another's), status requests (``edgecache.fed.status``) and its reads of other sites'
  versions (``edgecache.fed.site.*.s3.>``); in: only the reads of its own versions
  (``edgecache.fed.site.<site>.s3.>``: no site can answer another's). Changes travel by
  JetStream sourcing (below); ``edgecache.fed.apply`` and the change log subjects stay
  at their site;
- replies: out, to any inbox (``_INBOX.>``: it answers every site's reads); in, only to
  its own inboxes (``_INBOX.site.<site>.>``, where every connection at the site takes its
  replies: no site can read the replies meant for another);
- the JetStream API of the hub's domain and of the site's own (``$JS.hub.API.>``,
  ``$JS.<site>.API.>``): the site's ``FEDERATION`` mirror reads the hub's stream, the hub's
  ``FEDERATION`` sources the site's ``CHANGES``;
- what sourcing and mirroring use beside the API: their delivery subjects (``$JS.S.>``,
  ``$JS.M.>``), flow control (``$JS.FC.>``) and the servers' internal API replies
  (``$JSC.>``).

Never ``s3.>``: a request at a site is answered by its own nodes or by no one
(tests/integration/test_federation_sites.py). docs/security.md explains each line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from edgecache.common import subjects
from edgecache.launcher.natsauth import ADMIN, Permissions, inbox_prefix, render_authorization

__all__ = ["HUB_IDENTITIES", "hub_authorization_block", "leaf_permissions"]


def leaf_permissions(site: str) -> Permissions:
    """What crosses ``site``'s leaf node connection to the hub: ``publish``, what the site
    may send to the hub; ``subscribe``, what the hub sends to the site (nats-server's leaf
    node convention: a leaf user's publish permissions are exported to the hub, its
    subscribe permissions imported into the leaf)."""
    both = (
        f"{subjects.domain_api(subjects.HUB_DOMAIN)}.>",
        f"{subjects.domain_api(site)}.>",
        "$JS.S.>",
        "$JS.M.>",
        "$JS.FC.>",
        "$JSC.>",
    )
    return Permissions(
        publish=(
            subjects.site_heartbeat(site),
            subjects.FED_STATUS,
            f"{subjects.FED_PREFIX}.site.*.s3.>",  # its reads of other sites' versions
            "_INBOX.>",  # its replies (and read frames) to every site's requests
            *both,
        ),
        subscribe=(
            # only the reads of its own versions: a site cannot take another's
            f"{subjects.FED_PREFIX}.site.{site}.s3.>",
            # only replies to its own requests: a site cannot read another's
            f"{subjects.site_inboxes(site)}.>",
            *both,
        ),
    )


_API = "$JS.API"
_SITES_STREAM = f"KV_{subjects.KV_SITES}"

#: The hub's own identities (users with passwords): its federator, and the operator
#: (``None``: unrestricted).
HUB_IDENTITIES: dict[str, Permissions | None] = {
    "federator": Permissions(
        publish=(
            f"{_API}.INFO",
            f"{_API}.STREAM.CREATE.{subjects.FEDERATION_STREAM}",
            f"{_API}.STREAM.UPDATE.{subjects.FEDERATION_STREAM}",
            f"{_API}.STREAM.INFO.{subjects.FEDERATION_STREAM}",
            f"{_API}.STREAM.CREATE.{_SITES_STREAM}",
            f"{_API}.STREAM.INFO.{_SITES_STREAM}",
            f"{_API}.DIRECT.GET.{_SITES_STREAM}",
            f"{_API}.DIRECT.GET.{_SITES_STREAM}.>",
            f"{_API}.STREAM.MSG.GET.{_SITES_STREAM}",
            f"$KV.{subjects.KV_SITES}.>",
            "_INBOX.>",  # replies to the sites' heartbeats and to status requests
        ),
        subscribe=(
            subjects.FED_HEARTBEAT_WILDCARD,
            subjects.FED_STATUS,
            f"{inbox_prefix('federator')}.>",
        ),
    ),
    ADMIN: None,
}


def hub_authorization_block(site_keys: Mapping[str, str], passwords: Mapping[str, str]) -> str:
    """The hub's ``authorization {}`` block.

    Args:
        site_keys: each site's name → its nkey public key (``U…``).
        passwords: each of :data:`HUB_IDENTITIES`'s password.

    Raises:
        KeyError: ``passwords`` lacks an identity.
    """
    users: list[tuple[str, Permissions | None]] = [
        (f"user: {json.dumps(name)}, password: {json.dumps(passwords[name])}", perms)
        for name, perms in HUB_IDENTITIES.items()
    ]
    users += [
        (f"nkey: {json.dumps(key)}", leaf_permissions(site))
        for site, key in sorted(site_keys.items())
    ]
    return render_authorization(users)
