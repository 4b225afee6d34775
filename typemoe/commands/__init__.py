"""User commands that compose several rooms (the CLI's room: the one place that may import them all)."""
