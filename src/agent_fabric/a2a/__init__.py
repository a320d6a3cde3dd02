"""The A2A (Agent2Agent) protocol as the fabric speaks it: one JSON-RPC client (client.py)."""
