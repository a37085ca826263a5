"""The federator: cluster membership from cache-node heartbeats (KV ``nodes``).

Run it as ``python -m edgecache.federator --config FILE``. Placement, invalidation and
object-to-owner routing will build on :class:`~edgecache.federator.membership.Membership`.
"""
