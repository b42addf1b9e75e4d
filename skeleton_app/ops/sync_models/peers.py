"""How the nodes of one run reach each other: the OpenSSH commands in hops.sh and job.sh.

Data flows node to node: every node runs `ssh`/`rsync` to its peers with its own key and
known_hosts. Peers are numbered (source 0, targets from 1): control sockets are named by
number (a node id would not fit the 108 bytes of a unix socket path).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from skeleton_app.config import SSHSettings
from skeleton_app.nodes import Node

# AES-GCM first: with AES-NI it costs a fraction of chacha20's CPU per byte, and every byte
# of a chain is encrypted and decrypted once per hop. The others keep any sshd reachable.
HOP_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
               "aes128-ctr")
# X25519 instead of OpenSSH 9's default post-quantum hybrid (sntrup761x25519): measured here
# a node-to-node handshake took 200 ms with the hybrid and 135 ms without, and a chain opens
# one per target at the same time on CPUs that also carry the stream. It is the key exchange
# our Paramiko connections use anyway (Paramiko has no sntrup761). A full list rather than
# "^" (prepend to the defaults), which OpenSSH before 8.x rejects; every name here is known
# to OpenSSH 7.4 and later, so no node's ssh refuses the option.
HOP_KEX = ("curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,"
           "ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,"
           "diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,"
           "diffie-hellman-group14-sha256")


class Peers:
    """The run's nodes, numbered, and the commands each uses to reach the others."""

    def __init__(self, nodes: Sequence[Node], ssh: SSHSettings, run_dir: str, *,
                 relay: bool):
        self.nodes = tuple(nodes)
        self.index = {n.id: i for i, n in enumerate(self.nodes)}
        self.ssh = ssh
        self.run_dir = run_dir
        self.relay = relay  # nodes never connect to each other

    def connect_hint(self, node: Node) -> list[str]:
        """`--connect IDX` for the peer `node` will most likely send to first: the next target
        in order (a chain follows it unless some target is already up to date)."""
        if self.relay:
            return []
        i = self.index[node.id]
        return ["--connect", str(i + 1)] if i + 1 < len(self.nodes) else []

    def hop_ssh(self, dst: Node, *, master: str) -> list[str]:
        """OpenSSH argv a node uses to reach peer `dst`: the node's own key and known_hosts
        (the controller's files are not there), our host-key policy, finite timeouts, and a
        control master per peer so that later streams skip the handshake."""
        ssh = self.ssh
        policy = "accept-new" if ssh.host_key_policy == "accept-new" else "yes"
        return [
            "ssh", "-T", "-x", "-a", "-p", str(dst.port), "-l", dst.user,
            "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={policy}",
            "-o", f"ConnectTimeout={max(1, int(ssh.connect_timeout))}",
            "-o", f"ServerAliveInterval={max(1, int(ssh.keepalive))}",
            "-o", "ServerAliveCountMax=3", "-o", "Compression=no", "-o", "LogLevel=ERROR",
            "-c", HOP_CIPHERS, "-o", f"KexAlgorithms={HOP_KEX}",
            "-o", f"ControlPath=~/{self.run_dir}/cm-{self.index[dst.id]}",
            "-o", f"ControlMaster={master}",
        ] + (["-o", "ControlPersist=120"] if master == "auto" else [])

    def hops_sh(self, node: Node) -> bytes:
        """hop_connect IDX and hop_send IDX COMMAND for every other peer of this run."""
        if self.relay:
            return b""
        connect, send = [], []
        for peer in self.nodes:
            if peer.id == node.id:
                continue
            i = self.index[peer.id]
            argv = [*self.hop_ssh(peer, master="auto"), "--", peer.host, "true"]
            connect.append(f"    {i}) {shlex.join(argv)} ;;")
            argv = [*self.hop_ssh(peer, master="no"), "--", peer.host]
            send.append(f"    {i}) {shlex.join(argv)} \"$2\" ;;")
        fallback = "    *) echo \"no peer $1\" >&2; return 2 ;;"
        return ("hop_connect() {\n  case $1 in\n" + "\n".join([*connect, fallback])
                + "\n  esac\n}\nhop_send() {\n  case $1 in\n" + "\n".join([*send, fallback])
                + "\n  esac\n}\n").encode()

    def job_sh(self, me: Node, nxt: Node | None, next_cmd: str = "", extra: str = "") -> bytes:
        """JOB/job.sh for `me`: its number, and the next node of its chain with the command
        that receives there (`next_cmd`); `extra` lines for pulls."""
        head = f"ME={self.index[me.id]}\nFINISH=1\n"
        if nxt is None:
            return (head + "HAS_NEXT=0\n" + extra).encode()
        return (head + f"HAS_NEXT=1\nNEXT={self.index[nxt.id]}\n"
                f"NEXT_CMD={shlex.quote(next_cmd)}\n" + extra).encode()
