"""Installing a Debian package a test needs (promtool, chromium) when the machine lacks it.

scripts/services.sh does this for `make test`; tests call it too so that running one test file
directly works on a fresh machine. Returns None on success, else why it could not install.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def apt_install(package: str) -> str | None:
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        return "not root and no sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        try:
            done = subprocess.run([*prefix, *step], env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(step)}: {exc}"
        if done.returncode != 0:
            return f"{' '.join(step)} failed: {done.stderr.strip()[-300:]}"
    return None
