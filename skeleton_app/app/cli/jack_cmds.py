"""`skeleton jack`: the group of the audio mesh commands. The commands themselves live by
subject in their own modules (the JACK servers, the JackTrip links), each registering on
this group when `skeleton_app.app.cli` imports it."""

from __future__ import annotations

import click


@click.group()
def jack() -> None:
    """The JACK servers of the nodes and the JackTrip links between them."""
