"""Signing keys of an external identity provider, from its JWKS URL, picked by `kid`.

Fetched at start; an unknown `kid` triggers a refetch (the provider rotated keys), at most once
per MIN_REFRESH_SECONDS so a flood of forged kids cannot hammer the provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

MIN_REFRESH_SECONDS = 30.0


class JwksKeys:
    def __init__(self, url: str) -> None:
        self._url = url
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self._url)
            response.raise_for_status()
            keys = response.json().get("keys", [])
        self._keys = {k.get("kid"): k for k in keys if isinstance(k, dict)}
        self._fetched = time.monotonic()
        log.info("loaded identity provider keys", extra={"keys": len(self._keys)})

    async def get(self, kid: str | None) -> dict[str, Any] | None:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched >= MIN_REFRESH_SECONDS:
                try:
                    await self.load()
                except httpx.HTTPError as exc:
                    log.warning("JWKS refresh failed", extra={"error": str(exc)})
        return self._keys.get(kid)
