"""The "plain Fabric script" peer: what a user writes with Fabric's ThreadingGroup.

    python bench/fabric_fanout.py KEY KNOWN_HOSTS USER COMMAND HOST...

Same key and known_hosts as every other tool, with strict checking (RejectPolicy instead of
Fabric's default AutoAddPolicy); otherwise Fabric as shipped. Exit 0 when every host ran
COMMAND with exit 0. Run as a file (not `-m bench...`) so that it imports only Fabric.
"""

import sys

import paramiko
from fabric import ThreadingGroup
from fabric.exceptions import GroupException


def main(argv: list[str]) -> int:
    key, known_hosts, user, command, *hosts = argv
    group = ThreadingGroup(*hosts, user=user, connect_kwargs={
        "key_filename": key, "look_for_keys": False, "allow_agent": False})
    for conn in group:
        conn.client.load_host_keys(known_hosts)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        results = group.run(command, hide=True, warn=True)
    except GroupException as exc:
        for conn, result in exc.result.items():
            print(f"{conn.host}: {result}", file=sys.stderr)
        return 1
    finally:
        group.close()
    failed = [c.host for c, r in results.items() if r.exited != 0]
    if failed:
        print("non-zero exit on " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
