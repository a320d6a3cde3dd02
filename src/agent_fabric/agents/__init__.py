"""Agents the fabric manages: discovery of packages on disk, the registry and its lifecycle
states, registration credentials, configuration with history."""
