"""The operators' console (/console): static pages over the JSON API."""
