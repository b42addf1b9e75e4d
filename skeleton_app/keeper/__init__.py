"""Warm mode: a per-user connection keeper (issue #18).

The first `skeleton cluster ...` command starts a keeper in the background (`spawn`); it
holds the pooled SSH connections for `ssh.persist` seconds after their last use, and later
commands hand it their work over a Unix socket (`client.KeeperRunner`, a `Runner`), so a
second command costs one channel per node instead of a handshake.

    paths     where the socket, pid, lock and log live (a private 0700 directory)
    protocol  length-prefixed JSON frames with a bytes payload, over a Unix stream socket
    server    the keeper process (`python -m skeleton_app.keeper`)
    client    the controller's side; imports only the standard library and values
    spawn     starting a keeper, detached

This package imports no Paramiko at import time: only `server` needs it.
"""
