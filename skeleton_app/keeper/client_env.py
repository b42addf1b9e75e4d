"""What of a client's environment must equal the keeper's for the keeper to serve its
command (`keeper.served`): a process has one environment for all its threads, so what the
library reads from it (not from `load_config`'s `env`, which is the command's own) must be
the command's already. `SKELETON_*` settings are the command's own; the rest (PWD, SHLVL, a
pyenv shim's variables, ...) changes nothing here."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from skeleton_app.config import SSHSettings
from skeleton_app.keeper.held import SSH_CONFIGS

# What the library reads from the process environment (not from `load_config`'s `env`) on
# exec's path: `~` and the XDG dirs (known_hosts, ~/.ssh/config, the @failed state file),
# the agent, getpass's default login, the PATH of a ProxyCommand, the journal's clock.
# PATH only where an ssh config runs local commands (`runs_commands`): an activated
# virtualenv in one terminal and not in the other changes nothing else here.
_MUST_MATCH = ("HOME", "USER", "LOGNAME", "LNAME", "USERNAME", "SSH_AUTH_SOCK",
               "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "TZ")
# Lines of an ssh config that run a local command (found through PATH): Paramiko's
# ProxyCommand and `Match exec`. (Paramiko reads no `Include`: Debian's default one pulls in
# nothing it would see.)
_COMMANDS = re.compile(rb"^[ \t]*(proxycommand|match[ \t].*\bexec\b|localcommand)\b",
                       re.IGNORECASE | re.MULTILINE)
# Read from the process environment by libraries under exec's path: libpq (psycopg, the
# registry that lists the nodes and journals the run: PGSSLMODE, PGPASSWORD, PGHOST,
# PGPASSFILE, PGSERVICE...), Kerberos (libpq's GSSAPI) and OpenSSL (libpq's TLS). Every
# variable of these families must match, present or absent.
_MUST_MATCH_PREFIXES = ("PG", "KRB5", "OPENSSL_", "SSL_CERT_")


def groups() -> list[int]:
    """This process's group ids, primary included, as the warm client sends them."""
    return sorted({os.getgid(), *os.getgroups()})


def runs_commands(ssh: SSHSettings, home: str | None) -> bool:
    """Whether the ssh configs a connection reads may run a local command."""
    if not ssh.ssh_config:
        return False
    for path in SSH_CONFIGS:
        if path.startswith("~/"):
            if not home:
                return True
            path = os.path.join(home, path[2:])
        try:
            with open(path, "rb") as file:
                if _COMMANDS.search(file.read(1 << 20)):
                    return True
        except FileNotFoundError:
            continue
        except OSError:
            return True  # unreadable here: the Click path finds out what it says
    return False


def comparable(env: Mapping[str, str]) -> tuple[Any, ...]:
    families = sorted((k, v) for k, v in env.items() if k.startswith(_MUST_MATCH_PREFIXES))
    return (*(env.get(name) for name in _MUST_MATCH), tuple(families))


# The connection parameters libpq opens as files, relative to the process's directory: the
# keeper's is "/", the Click path's the command's. A relative sslrootcert missing there is no
# error under sslmode=require: the served command would talk to the registry unverified.
_DSN_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir", "passfile")


def relative_dsn_files(dsn: str) -> bool:
    """Whether `dsn` names a file relative to the current directory (or is unreadable)."""
    from psycopg.conninfo import conninfo_to_dict  # psycopg only with a registry

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # the Click path reports it in its words
        return True
    return any(isinstance(value, str) and value and value != "system"
               and not os.path.isabs(value) for key, value in params.items()
               if key in _DSN_FILES)
