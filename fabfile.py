"""Fabric tasks for people who use `fab`: `fab -H host1,host2 uptime`.

`fab` builds plain Fabric connections (which would auto-add unknown host keys); every task
here first re-wraps the connection with skeleton's host-key policy, identity and timeouts
from the configuration, then calls the library.
"""

from __future__ import annotations

from fabric import task

from skeleton_app.cluster import Cluster


def _secure(c):
    """The same host/user/port as `c`, with our host-key policy and timeouts."""
    return Cluster.from_config().connector.wrap(c)


@task
def uptime(c):
    """Print the node's uptime."""
    conn = _secure(c)
    conn.run("uptime", in_stream=False)
    conn.close()


@task(help={"command": "The shell command to run."})
def run(c, command):
    """Run a command on the host(s) given with -H."""
    conn = _secure(c)
    conn.run(command, in_stream=False)
    conn.close()
