"""Who may do what on NATS: one identity per service, one for other platform services, one
for the operator, each with least-privilege publish/subscribe permissions.

:data:`IDENTITIES` is the table; :func:`authorization_block` renders it as the
``authorization {}`` block of a nats-server config (the private server of ``edgecache up``,
and ``compose/nats-server.conf``, which a test keeps equal to it). docs/security.md explains
each line.

The subjects are those of :mod:`edgecache.common.subjects` and of the JetStream API that
nats-py calls for them:

- KV ``<b>``: writes (put, create, update, delete, purge) publish to ``$KV.<b>.<key>``;
  reads are ``$JS.API.DIRECT.GET.KV_<b>[.<subject>]`` (``allow_direct`` buckets) or
  ``$JS.API.STREAM.MSG.GET.KV_<b>``; ``keys()`` and watches create an ordered consumer
  (``$JS.API.CONSUMER.CREATE.KV_<b>[...]``, then ``$JS.API.CONSUMER.INFO.KV_<b>.<name>``
  for the number of initial values) whose flow-control requests are answered on the reply
  subject they arrive with (``allow_responses``).
- ``WRITEBACK``: intents are published to ``edgecache.writeback.<p>``; the writeback
  service pulls (``$JS.API.CONSUMER.MSG.NEXT.WRITEBACK.<durable>``) and acks
  (``$JS.ACK.WRITEBACK.>``).
- :func:`edgecache.common.jetstream.ensure_state`, which the cache node, writeback and
  federator call at start (and the federator again when KV ``nodes``, kept in memory, is
  lost with a NATS restart): create or look up each stream, update ``WRITEBACK`` when its
  config changed, create its durable consumers. Nothing but the operator may delete or
  purge a stream.

Reply subjects: every identity has its own inbox prefix, ``_INBOX.<identity>`` (nats-py's
``inbox_prefix``; ``_INBOX.site.<site>.<identity>`` at a federated site), and may subscribe
under it only, so no one reads another's replies. The
cache node answers and streams to every requester's inbox; requesters send credit to the
cache node's inbox and upload frames to ``edgecache.stream.<node>.<id>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgecache.common import subjects, wire

__all__ = [
    "ADMIN",
    "IDENTITIES",
    "PLATFORM",
    "SERVICE_IDENTITIES",
    "Permissions",
    "authorization_block",
    "federation_grants",
    "identities_for",
    "inbox_prefix",
    "password_variable",
    "render_authorization",
]

PLATFORM = "platform"  # other platform services that call s3.*
ADMIN = "admin"  # the operator: `edgecache up` (creates the state) and `edgecache status`

_API = "$JS.API"
_KV_STREAM = "KV_{bucket}"  # nats-py's stream name of a KV bucket
_ALL_KV = (subjects.KV_BUCKETS, subjects.KV_OBJECTS, subjects.KV_UPLOADS, subjects.KV_NODES)


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one identity may publish and subscribe to (NATS subjects, wildcards allowed).

    ``allow_responses``: it may also publish one reply to the reply subject of a message it
    received, within 2 minutes (JetStream flow-control requests of KV watches).
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


def inbox_prefix(identity: str, site: str = "") -> str:
    """Where ``identity``'s reply subjects live: ``_INBOX.<identity>``, at a federated
    ``site`` ``_INBOX.site.<site>.<identity>`` (under the site's own inboxes, the only ones
    the hub lets reach it: :func:`edgecache.common.subjects.site_inboxes`). Pass it to
    ``nats.connect(inbox_prefix=...)``, or set ``nats.inbox_prefix``."""
    return f"{subjects.site_inboxes(site)}.{identity}" if site else f"_INBOX.{identity}"


def _inboxes(identity: str, site: str = "") -> str:
    return f"{inbox_prefix(identity, site)}.>"


def _kv_read(bucket: str) -> tuple[str, ...]:
    stream = _KV_STREAM.format(bucket=bucket)
    return (
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
        f"{_API}.STREAM.MSG.GET.{stream}",
    )


def _kv_watch(bucket: str) -> tuple[str, ...]:
    stream = _KV_STREAM.format(bucket=bucket)
    return (
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.INFO.{stream}.*",  # how many initial values a watch will get
    )


def _kv_write(bucket: str) -> tuple[str, ...]:
    return (f"$KV.{bucket}.>",)


def _ensure_state() -> tuple[str, ...]:
    streams = [*(_KV_STREAM.format(bucket=b) for b in _ALL_KV), subjects.WRITEBACK_STREAM]
    wb = subjects.WRITEBACK_STREAM
    return (
        *(f"{_API}.STREAM.CREATE.{s}" for s in streams),
        *(f"{_API}.STREAM.INFO.{s}" for s in streams),
        f"{_API}.STREAM.UPDATE.{wb}",
        *(
            f"{_API}.CONSUMER.DURABLE.CREATE.{wb}.{subjects.writeback_consumer(p)}"
            for p in range(subjects.WRITEBACK_PARTITIONS)
        ),
        # whether a consumer exists: only the writeback service changes an existing one's
        # ack_wait (edgecache.common.jetstream.ensure_state)
        *(
            f"{_API}.CONSUMER.INFO.{wb}.{subjects.writeback_consumer(p)}"
            for p in range(subjects.WRITEBACK_PARTITIONS)
        ),
    )


# readiness (/health/ready): "JetStream reachable" is an account-info request
_HEALTH = (f"{_API}.INFO",)
_STREAM_DATA = subjects.stream_inbox("*", "*")  # upload frames, to the receiving node
_INTENTS = tuple(subjects.writeback_subject(p) for p in range(subjects.WRITEBACK_PARTITIONS))


# The admin API (in the federator): its requests to the cache nodes, the two s3.* requests
# it makes (listing a prefix to purge or warm it, aborting an upload), and what it reads of
# the WRITEBACK stream for the backlog (edgecache.common.backlog).
_ADMIN_REQUESTS = (subjects.ADMIN_PURGE, subjects.ADMIN_WARM, subjects.ADMIN_UPLOADS)
_ADMIN_API = (
    *_ADMIN_REQUESTS,
    subjects.s3(wire.ListObjects.operation),
    subjects.s3(wire.AbortMultipartUpload.operation),
    f"{_API}.CONSUMER.INFO.{subjects.WRITEBACK_STREAM}.*",
    f"{_API}.STREAM.MSG.GET.{subjects.WRITEBACK_STREAM}",
)


def _requester(identity: str, site: str, *, also_subscribe: tuple[str, ...] = ()) -> Permissions:
    """A caller of the ``s3.*`` API (gateway, platform service): requests, upload frames,
    download credit (to the sending node's inbox); replies on its own inbox."""
    return Permissions(
        publish=("s3.>", _STREAM_DATA, _inboxes("cachenode", site), *_HEALTH),
        subscribe=(_inboxes(identity, site), *also_subscribe),
    )


def _identities(site: str) -> dict[str, Permissions | None]:
    """Every identity's permissions at a lone site (``site`` ``""``) or at federated
    ``site``, whose inboxes are under its own (:func:`inbox_prefix`); without the
    federation's grants (:func:`identities_for` adds them)."""
    return {
        "gateway": _requester("gateway", site, also_subscribe=(subjects.EVENTS_INVALIDATE,)),
        "cachenode": Permissions(
            publish=(
                "_INBOX.>",  # replies and download frames to every requester (see docs/security.md)
                subjects.chunk_get("*"),
                subjects.chunk_put("*"),
                _STREAM_DATA,
                subjects.HEARTBEAT_WILDCARD,
                subjects.EVENTS_OBJECT_CLEAN,
                subjects.EVENTS_CHUNKS_RELEASED,
                subjects.EVENTS_CHUNKS_PURGED,
                subjects.EVENTS_INVALIDATE,
                *_INTENTS,
                *_ensure_state(),
                *(
                    s
                    for b in (subjects.KV_BUCKETS, subjects.KV_OBJECTS, subjects.KV_UPLOADS)
                    for s in _kv_write(b)
                ),
                *(s for b in _ALL_KV for s in (*_kv_read(b), *_kv_watch(b))),
                *_HEALTH,
            ),
            subscribe=(
                "s3.>",
                subjects.chunk_get("*"),
                subjects.chunk_put("*"),
                _STREAM_DATA,
                subjects.EVENTS_OBJECT_CLEAN,
                subjects.EVENTS_CHUNKS_RELEASED,
                *_ADMIN_REQUESTS,
                subjects.EVENTS_CHUNKS_PURGED,
                _inboxes("cachenode", site),
            ),
            allow_responses=True,
        ),
        "writeback": Permissions(
            publish=(
                subjects.chunk_get("*"),
                _inboxes("cachenode", site),  # reading dirty chunks: credit to the node
                subjects.EVENTS_OBJECT_CLEAN,
                subjects.WRITEBACK_RETRIES,
                f"{_API}.CONSUMER.MSG.NEXT.{subjects.WRITEBACK_STREAM}.*",
                f"$JS.ACK.{subjects.WRITEBACK_STREAM}.>",
                *_ensure_state(),
                *(
                    s
                    for b in (subjects.KV_BUCKETS, subjects.KV_OBJECTS)
                    for s in (*_kv_write(b), *_kv_read(b))
                ),
                *_HEALTH,
            ),
            subscribe=(_inboxes("writeback", site),),
        ),
        "federator": Permissions(
            publish=(
                *_ensure_state(),
                *_kv_write(subjects.KV_NODES),
                *_kv_read(subjects.KV_NODES),
                *_HEALTH,
                *_ADMIN_API,
            ),
            subscribe=(subjects.HEARTBEAT_WILDCARD, _inboxes("federator", site)),
        ),
        PLATFORM: _requester(PLATFORM, site),
        ADMIN: None,
    }


#: Every identity of a lone site, by name (also its NATS user name). ``None``: no
#: restriction (the operator's). The services' identities carry the service's name.
IDENTITIES: dict[str, Permissions | None] = _identities("")

#: The identity of each service ``edgecache up`` runs.
SERVICE_IDENTITIES: dict[str, str] = {
    name: name for name in ("gateway", "cachenode", "writeback", "federator")
}


def password_variable(identity: str) -> str:
    """The environment variable that holds ``identity``'s password in the compose stack
    (``EDGECACHE_NATS_<IDENTITY>_PASSWORD``): nats-server reads it as ``$NAME``."""
    return f"EDGECACHE_NATS_{identity.upper()}_PASSWORD"


def _strings(values: tuple[str, ...], indent: str) -> str:
    return "[\n" + "".join(f"{indent}  {json.dumps(v)}\n" for v in values) + f"{indent}]"


def authorization_block(
    passwords: Mapping[str, str] | None = None,
    *,
    site: str = "",
    nkeys: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The ``authorization {}`` block of a nats-server config: one user per identity of
    :data:`IDENTITIES` with its permissions; no anonymous connections.

    Args:
        passwords: each identity's password, written quoted; ``None`` writes environment
            references instead (``$EDGECACHE_NATS_<IDENTITY>_PASSWORD``, for compose).
        site: a federated site's name: each identity gets its federation grants too
            (:func:`identities_for`); ``""``: a lone site.
        nkeys: identity name -> public user nkeys (``U…``): one more user per key, with
            that identity's permissions (each cache node of ``edgecache up`` has its own).

    Raises:
        KeyError: ``passwords`` lacks an identity, or ``nkeys`` names an unknown one.
    """
    users = []
    for name, perms in identities_for(site).items():
        secret = (
            json.dumps(passwords[name]) if passwords is not None else f"${password_variable(name)}"
        )
        users.append((f"user: {json.dumps(name)}, password: {secret}", perms))
    for name, publics in (nkeys or {}).items():
        perms = identities_for(site)[name]
        users += [(f"nkey: {json.dumps(public)}", perms) for public in publics]
    return render_authorization(users)


def render_authorization(users: list[tuple[str, Permissions | None]]) -> str:
    """An ``authorization {}`` block of ``users``: each is its credential fields as the
    config writes them (``user: "x", password: "y"`` or ``nkey: "U…"``) and its permissions
    (``None``: unrestricted)."""
    lines = ["authorization {", "  users = ["]
    for credential, perms in users:
        if perms is None:
            lines.append(f"    {{{credential}}}")
            continue
        lines += [
            f"    {{{credential}, permissions: {{",
            f"      publish: {{allow: {_strings(perms.publish, '      ')}}}",
            f"      subscribe: {{allow: {_strings(perms.subscribe, '      ')}}}",
        ]
        if perms.allow_responses:
            lines.append('      allow_responses: {max: 1, expires: "2m"}')
        lines.append("    }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"



# -- federation: what each identity of a federated site may do beyond a lone site's
# (docs/security.md, "Sites and the hub"). Only these subjects cross the site's leaf node
# connection to the hub (edgecache.launcher.hubauth.leaf_permissions).

_FED_STREAMS = (subjects.CHANGES_STREAM, subjects.FEDERATION_STREAM)
_FED_CONSUMER = f"{subjects.FEDERATION_STREAM}.{subjects.FEDERATION_CONSUMER}"


def federation_grants(site: str) -> dict[str, Permissions]:
    """What each service identity of ``site`` may do beyond a lone site's.

    - cache node: answer ``edgecache.fed.apply`` (queue group ``cachenode``) and other
      sites' reads of this site's versions (``edgecache.fed.site.<site>.s3.>``); append to
      this site's change log (``edgecache.fed.changes.<site>``, a JetStream publish whose
      acknowledgement comes to its inbox); ask other sites (``edgecache.fed.site.*.s3.>``);
      hear this site's invalidations (its route cache of owner sites).
    - writeback: append to this site's change log (a version turned clean, a tombstone
      removed).
    - federator: create the site's streams and its ``apply`` consumer, read and ack it,
      restart its stalled source (a stream update), ask ``edgecache.fed.apply``, send
      heartbeats to the hub and ask it for the sites' status.
    """
    return {
        "cachenode": Permissions(
            publish=(subjects.site_changes(site), f"{subjects.FED_PREFIX}.site.*.s3.>"),
            # the route cache drops a key's owner site when the key changes at this site
            subscribe=(subjects.FED_APPLY, f"{subjects.FED_PREFIX}.site.{site}.s3.>", subjects.EVENTS_INVALIDATE),
        ),
        # its catalog logs "clean" (and tombstone removal) to the site's change log
        "writeback": Permissions(publish=(subjects.site_changes(site),), subscribe=()),
        "federator": Permissions(
            publish=(
                *(f"{_API}.STREAM.{op}.{s}" for s in _FED_STREAMS for op in ("CREATE", "INFO")),
                f"{_API}.STREAM.UPDATE.{subjects.FEDERATION_STREAM}",
                f"{_API}.CONSUMER.CREATE.{_FED_CONSUMER}",
                f"{_API}.CONSUMER.CREATE.{_FED_CONSUMER}.>",
                f"{_API}.CONSUMER.DURABLE.CREATE.{_FED_CONSUMER}",
                f"{_API}.CONSUMER.INFO.{_FED_CONSUMER}",
                f"{_API}.CONSUMER.MSG.NEXT.{_FED_CONSUMER}",
                f"$JS.ACK.{subjects.FEDERATION_STREAM}.>",
                subjects.FED_APPLY,
                subjects.site_heartbeat(site),
                subjects.FED_STATUS,
            ),
            subscribe=(),
        ),
    }


def identities_for(site: str) -> dict[str, Permissions | None]:
    """:data:`IDENTITIES`, or at federated ``site`` the same identities with their inboxes
    under the site's (:func:`inbox_prefix`), each widened by its :func:`federation_grants`
    (``""``: :data:`IDENTITIES` as they are)."""
    if not site:
        return IDENTITIES
    grants = federation_grants(site)
    out: dict[str, Permissions | None] = {}
    for name, perms in _identities(site).items():
        extra = grants.get(name)
        if perms is None or extra is None:
            out[name] = perms
            continue
        out[name] = Permissions(
            publish=(*perms.publish, *extra.publish),
            subscribe=(*perms.subscribe, *extra.subscribe),
            allow_responses=perms.allow_responses,
        )
    return out
