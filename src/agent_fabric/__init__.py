"""agent-fabric: runs AI-agent work safely at scale."""

__version__ = "0.1.0"
