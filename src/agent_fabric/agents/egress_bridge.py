"""Runs inside an agent's network sandbox: the agent's only way out.

    python -m agent_fabric.agents.egress_bridge <port>=<unix socket> [...] -- <agent command...>

The sandbox (bubblewrap --unshare-net) has a loopback interface and nothing else. This forks a
small relay that listens on 127.0.0.1:<port> there for each pair and carries each connection over
the unix socket to the fabric: the egress proxy (HTTP_PROXY/HTTPS_PROXY name it; it decides what
may pass, agents/egress_proxy.py) and, for agents with NATS credentials, the NATS server
(agents/nats_relay.py). Then it becomes the agent (exec). Standard library only: it starts before
every agent.
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


def _relay(forwards: list[tuple[int, str]]) -> None:
    listeners = []
    for port, path in forwards:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listeners.append((listener, path))
    agent = os.getpid()  # after exec, the agent itself
    if os.fork() == 0:  # the relay: it must hold none of the agent's pipes (protocol and log)
        _die_with_parent()
        if os.getppid() != agent:  # the agent was already gone before the death signal was armed
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for listener, path in listeners[1:]:
            threading.Thread(target=_serve, args=(path, listener), daemon=True).start()
        _serve(listeners[0][1], listeners[0][0])
        os._exit(0)
    for listener, _ in listeners:
        listener.close()


def _die_with_parent() -> None:
    """The relay ends when the agent (its parent, after exec) ends: PR_SET_PDEATHSIG."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: egress_bridge <port>=<unix socket> [...] -- <command...>")
    split = argv.index("--")
    pairs, command = argv[:split], argv[split + 1 :]
    forwards = [(int(port), path) for port, _, path in (pair.partition("=") for pair in pairs)]
    if not forwards or not command:
        sys.exit("usage: egress_bridge <port>=<unix socket> [...] -- <command...>")
    _relay(forwards)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
