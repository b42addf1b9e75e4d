"""The audio mesh (`skeleton jack ...`): each node's JACK server (status, start, stop, port
connections) and the JackTrip links between nodes (link, unlink, mesh), on the `jack:` section
of config.yaml (skeleton_app/jack_settings.py)."""
