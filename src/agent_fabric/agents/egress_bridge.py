"""Runs inside an agent's network sandbox: the agent's only way out.

    python -m agent_fabric.agents.egress_bridge <unix socket> <port> -- <agent command...>

The sandbox (bubblewrap --unshare-net) has a loopback interface and nothing else. This forks a
small relay that listens on 127.0.0.1:<port> there and carries each connection to the fabric's
egress proxy over the unix socket bound into the sandbox; then it becomes the agent (exec), whose
environment names http://127.0.0.1:<port> as HTTP_PROXY/HTTPS_PROXY. The proxy outside decides
what may pass (agents/egress_proxy.py). Standard library only: it starts before every agent.
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (sink, source):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(path: str, listener: socket.socket) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            continue
        threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


def _die_with_parent() -> None:
    """The relay ends when the agent (its parent, after exec) ends: PR_SET_PDEATHSIG."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: egress_bridge <unix socket> <port> -- <command...>")
    path, port, command = argv[0], int(argv[1]), argv[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    if os.fork() == 0:  # the relay: it must not hold the agent's protocol pipes open
        _die_with_parent()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        _serve(path, listener)
        os._exit(0)
    listener.close()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
