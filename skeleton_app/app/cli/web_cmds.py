"""`skeleton web`: serve the read-only web page of the cluster (skeleton_app/web)."""

from __future__ import annotations

import click

from skeleton_app.app.cli.options import config_option, prepare


@click.command("web")
@config_option
@click.option("--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on; any but loopback needs --token-file.")
@click.option("--port", type=click.IntRange(0, 65535), default=8780, show_default=True,
              help="Port to listen on (0: any free port, printed).")
@click.option("--token-file", default=None, metavar="FILE",
              help="A file of mode 0600 holding the token every request must carry"
                   " (open the page once as /?token=TOKEN).")
@click.pass_context
def web(ctx: click.Context, config: str | None, bind: str, port: int,
        token_file: str | None) -> int:
    """Serve one page with the node table, charts of the history, the last runs, the jobs
    and the nodes' live logs. Read-only; Ctrl-C stops it."""
    from skeleton_app.web import serve

    settings = prepare(ctx, config, None).settings()
    serve(settings, bind=bind, port=port, token_file=token_file,
          say=lambda line: click.echo(line, err=True))
    return 0
