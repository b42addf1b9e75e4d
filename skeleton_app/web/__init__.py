"""`skeleton web`: a read-only web page of the cluster, served by the standard library.

    server.py   the HTTP server: GET only, the token on every request, the security headers,
                the page's static files (static/, shipped as package data)
    api.py      what the page reads, as JSON: nodes, history, runs, jobs, log lines
    logtail.py  the live log pane's source: one follower of the nodes' daemon logs per
                server (`follow_logs`), lines kept in a bounded ring buffer with a cursor
    auth.py     the token: read from a 0600 file, compared in constant time

Nothing here runs anything on a node except the log followers' `tail` (what `cluster logs
--follow` runs); nothing here is imported by any other part of skeleton_app but the CLI.
"""

from skeleton_app.web.server import WebServer, serve

__all__ = ["WebServer", "serve"]
