"""Warm mode: a per-user connection keeper (issue #18).

The first `skeleton cluster ...` command starts a keeper in the background (`spawn`); it
holds the pooled SSH connections for `ssh.persist` seconds after their last use, and later
commands hand it their work over a Unix socket (a warm `cluster exec` whole, `thin`; the
others node by node, `client.KeeperRunner`), so a second command costs one channel per node
instead of a handshake.

    locate    where the socket is and whether its directory is safe (os and stat only)
    paths     the library's view of it: KeeperPaths, KeeperPathError
    protocol  length-prefixed JSON frames with a bytes payload, over a Unix stream socket
    server    the keeper process (`python -m skeleton_app.keeper`)
    held      the connections it holds, keyed by what makes a connection
    served    a whole `cluster exec` run in the keeper, or declined
    client_env  what of a client's environment must equal the keeper's to be served
    code_watch  whether the keeper's code changed on disk (then it declines and leaves)
    thin      the warm client of `skeleton cluster exec` (the standard library only)
    client    KeeperRunner, the Runner of the other CLI commands; status and stop requests
    lines     deploy's line conversation relayed through the keeper
    spawn     starting a keeper, detached (or as the command exits)

This package imports no Paramiko at import time: only the keeper process does (`server`,
with `held`, `served` and `client_env`).
"""
