"""`skeleton db|nodes|runs ...`: the PostgreSQL node registry, its node table and the
journal of recorded cluster operations.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from skeleton_app.app.cli.options import config_option, output_options, prepare, select
from skeleton_app.errors import NodeError, NodeErrorKind, UsageError

if TYPE_CHECKING:
    from skeleton_app.registry import Registry


@click.group()
def db() -> None:
    """The PostgreSQL node registry."""


@db.command("init")
@config_option
@click.pass_context
def db_init(ctx: click.Context, config: str | None) -> int:
    """Create or upgrade the schema (idempotent; safe to run concurrently)."""
    from skeleton_app.registry import init_schema

    settings = prepare(ctx, config, None).settings()
    if not settings.registry.dsn:
        raise UsageError("no database configured: set registry.dsn or SKELETON_DATABASE_URL")
    st = init_schema(settings.registry.dsn, connect_timeout=settings.registry.connect_timeout)
    if st.applied:
        click.echo(f"schema upgraded from version {st.before or 0} to {st.after}")
    else:
        click.echo(f"schema is up to date (version {st.after})")
    return 0


def _registry(ctx: click.Context, config: str | None) -> Registry:
    from skeleton_app.registry import open_registry

    return open_registry(prepare(ctx, config, None).settings())


@click.group()
def nodes() -> None:
    """The node table: list, add, approve, credentials, remove, enable, disable, import,
    export."""


@nodes.command("list")
@config_option
@output_options
@click.pass_context
def nodes_list(ctx: click.Context, config: str | None, as_json: bool) -> int:
    """Every registered node, enabled or not, with its heartbeat."""
    from skeleton_app.app.views import common as render

    settings = prepare(ctx, config, None).settings()
    with _registry(ctx, config) as registry:
        entries, warnings = registry.list_entries(enabled_only=False)
    for warning in warnings:
        click.echo(f"skeleton: warning: {warning}", err=True)
    stale_after = settings.registry.stale_after
    if as_json:
        click.echo(json.dumps([{
            "id": e.node.id, "host": e.node.host, "port": e.node.port, "user": e.node.user,
            "roles": list(e.node.roles), "app_dir": e.node.app_dir, "enabled": e.enabled,
            "approved": e.approved, "state": e.state, "daemon_state": e.daemon_state,
            "code_version": e.code_version,
            "seen_ago": e.seen_ago, "stale": e.is_stale(stale_after)} for e in entries],
            indent=2))
        return 0
    rows = [[e.node.id, e.node.host, ",".join(e.node.roles), e.state,
             e.daemon_state or "-",
             "-" if e.seen_ago is None else f"{e.seen_ago:.0f}s ago"
             + (" (stale)" if e.is_stale(stale_after) else ""),
             (e.code_version or "-")[:12]] for e in entries]
    render.table(None, ["node", "host", "roles", "state", "daemon", "heartbeat", "version"],
                 rows)
    return 0


@nodes.command("add")
@click.argument("node_id")
@click.argument("host")
@click.option("--port", type=click.IntRange(1, 65535), default=None)
@click.option("--user", default=None)
@click.option("--role", "roles", multiple=True, help="Repeatable.")
@click.option("--app-dir", default=None)
@click.option("--credentials", is_flag=True,
              help="Also create the node's own database role and print its DSN.")
@config_option
@click.pass_context
def nodes_add(ctx: click.Context, node_id: str, host: str, port: int | None, user: str | None,
              roles: tuple[str, ...], app_dir: str | None, credentials: bool,
              config: str | None) -> int:
    """Add (or update) a node; it is approved (a target)."""
    from skeleton_app.registry import parse_node

    info: dict[str, Any] = {"id": node_id, "host": host, "roles": list(roles)}
    for key, value in (("port", port), ("user", user), ("app_dir", app_dir)):
        if value is not None:
            info[key] = value
    spec = parse_node(info)
    with _registry(ctx, config) as registry:
        created = registry.upsert_node(spec)
        dsn = registry.issue_credentials(node_id) if credentials else None
    click.echo(f"{'added' if created else 'updated'} {node_id}")
    if dsn:
        click.echo(dsn)
    return 0


def _toggle(ctx: click.Context, config: str | None, node_id: str, action: str) -> int:
    with _registry(ctx, config) as registry:
        if action == "remove":
            found = registry.remove_node(node_id)
        elif action == "approve":
            found = registry.approve(node_id)
        else:
            found = registry.set_enabled(node_id, action == "enable")
    if not found:
        raise UsageError(f"unknown node {node_id!r}")
    click.echo(f"{action}d {node_id}" if action != "remove" else f"removed {node_id}")
    return 0


def _node_action(action: str, help_text: str) -> None:
    """`skeleton nodes remove|enable|disable NODE_ID`: one command each, one helper."""

    @nodes.command(action, help=help_text)
    @click.argument("node_id")
    @config_option
    @click.pass_context
    def command(ctx: click.Context, node_id: str, config: str | None) -> int:
        return _toggle(ctx, config, node_id, action)


for _action, _help in (("remove", "Remove a node from the table."),
                       ("approve", "Make a node that registered itself (pending) a target."),
                       ("enable", "Target this node again."),
                       ("disable", "Stop targeting this node (it stays registered).")):
    _node_action(_action, _help)


@nodes.command("credentials")
@click.argument("node_id")
@click.option("--install", is_flag=True,
              help="Write them over SSH to the node's registry.node_dsn_file (mode 0600).")
@config_option
@click.pass_context
def nodes_credentials(ctx: click.Context, node_id: str, install: bool,
                      config: str | None) -> int:
    """Give NODE_ID's daemon a database role of its own (new password: the old one stops
    working); print its DSN, or --install it on the node."""
    if not install:
        with _registry(ctx, config) as registry:
            click.echo(registry.issue_credentials(node_id))
        return 0
    from skeleton_app.ops.credentials import install_credentials

    session, nodes = select(ctx, config, None, [node_id], (), ())
    cluster_ = session.cluster()
    result = install_credentials(cluster_, nodes[0])
    if result.error_kind is not None or result.exit_code != 0:
        raise NodeError(result.error_kind or NodeErrorKind.ERROR,
                        "credentials not installed (the new password is already"
                        f" in force): {result.error or result.stderr.strip()}", node=node_id)
    click.echo(f"installed {node_id}'s credentials in {cluster_.settings.registry.node_dsn_file}"
               " on the node; restart its daemon to use them")
    return 0


@nodes.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@config_option
@click.pass_context
def nodes_import(ctx: click.Context, path: str, config: str | None) -> int:
    """Read a config.yaml-style `nodes:` list (a YAML file) into the table."""
    import yaml

    from skeleton_app.registry import import_nodes

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read nodes: {exc}") from None
    items = data.get("nodes") if isinstance(data, dict) else data
    with _registry(ctx, config) as registry:
        done = import_nodes(registry, items, source=path)
    click.echo(f"imported {len(done.added)} new, {len(done.updated)} updated")
    return 0


@nodes.command("export")
@config_option
@click.option("--prometheus", is_flag=True,
              help="Print the Prometheus scrape config for the daemons' /metrics instead.")
@click.option("--token-file", default="/etc/prometheus/skeleton-health-token",
              show_default=True, metavar="PATH",
              help="With --prometheus: where Prometheus reads daemon.health_token from.")
@click.pass_context
def nodes_export(ctx: click.Context, config: str | None, prometheus: bool,
                 token_file: str) -> int:
    """Print the table as a config.yaml `nodes:` list (--prometheus: as a scrape config)."""
    import yaml

    from skeleton_app.registry import export_nodes

    if prometheus:
        return _export_prometheus(ctx, config, token_file)
    with _registry(ctx, config) as registry:
        items, warnings = export_nodes(registry)
    for warning in warnings:
        click.echo(f"skeleton: warning: {warning}", err=True)
    click.echo(yaml.safe_dump({"nodes": items}, sort_keys=False), nl=False)
    return 0


def _export_prometheus(ctx: click.Context, config: str | None, token_file: str) -> int:
    from skeleton_app.app.views import scrape_config

    settings = prepare(ctx, config, None).settings()
    with _registry(ctx, config) as registry:
        entries, warnings = registry.list_entries(enabled_only=False)
    for warning in warnings:
        click.echo(f"skeleton: warning: {warning}", err=True)
    approved = [e.node for e in entries if e.approved]  # a pending node is nobody's yet
    click.echo(scrape_config.render(approved, token_set=bool(settings.daemon.health_token),
                                    token_file=token_file), nl=False)
    return 0


@click.group()
def runs() -> None:
    """Recorded cluster operations: list and show (with a registry), retry."""


@runs.command("list")
@config_option
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@output_options
@click.pass_context
def runs_list(ctx: click.Context, config: str | None, limit: int, as_json: bool) -> int:
    """The latest runs (--json: the journal records, keys in the README)."""
    from skeleton_app.app.views import runs as view

    with _registry(ctx, config) as registry:
        records = registry.list_runs(limit=limit)
    if as_json:
        click.echo(view.runs_json(records))
    else:
        view.runs_table(records, sys.stdout)
    return 0


@runs.command("show")
@click.argument("run_ref", metavar="RUN")
@config_option
@output_options
@click.pass_context
def runs_show(ctx: click.Context, run_ref: str, config: str | None, as_json: bool) -> int:
    """One run with its per-node outcomes (--json: the record and every node's). RUN: a
    run id, or `last` (your newest run, as `runs retry last`)."""
    from skeleton_app.app.views import runs as view

    if run_ref != "last" and not run_ref.isdigit():
        raise UsageError(f"runs show: expected a run id or `last`, got {run_ref!r}")
    with _registry(ctx, config) as registry:
        record = registry.last_run() if run_ref == "last" else registry.get_run(int(run_ref))
    if record is None:
        raise UsageError("runs show last: no run recorded" if run_ref == "last"
                         else f"unknown run {run_ref}")
    if as_json:
        click.echo(view.run_json(record))
    else:
        view.run_text(record, sys.stdout)
    return 0
