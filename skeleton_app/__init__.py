"""skeleton_app: run a small cluster of voice/ML nodes over plain SSH."""

__version__ = "0.1.0"
