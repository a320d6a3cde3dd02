"""What a task must pass before it is queued or run, the same at both doors (HTTP and NATS)."""
