"""The ``edgecache`` command: runs the whole stack on one machine (``edgecache up``),
one service in the foreground, and ``edgecache status``.

An application, not a library: the ``edgecache-launcher`` distribution owns the console
entry point and is installed where a person runs the stack (``make up``, the tests), never
in a service image. It only spawns the services as processes (``python -m
edgecache.<service>``), so it imports none of them.

Modules, one noun each: :mod:`.cli` (the click commands and their flags), :mod:`.up`
(planning and running the stack), :mod:`.status` (reading the cluster's state),
:mod:`.render` (what a person reads: the banner, the status table), :mod:`.datadir` (the
data directory's files and lock), :mod:`.credentials` (the gateway's keys and the NATS
identities' passwords), :mod:`.configfile` (the effective ``edgecache.toml``),
:mod:`.ports` (TCP/HTTP probes), :mod:`.connection` (short NATS connections),
:mod:`.supervisor` (child processes), :mod:`.natsserver` (the private ``nats-server``) and
:mod:`.natsauth` (the NATS identities and their permissions).
"""
