"""The health-only port (`health_port`), answered by a small process of its own.

Kubelet probes must be answered quickly however busy the service is. In the service's own
process a health check waits for the interpreter lock behind the model and every call in
flight (hundreds of milliseconds on two saturated cores), so the probe port is served by a
child process that holds nothing but a gRPC server and the health status:

- The service sends its status down a pipe (`1` SERVING, `0` NOT_SERVING) when it changes
  and every HEARTBEAT_S as a heartbeat.
- The child answers grpc.health.v1 Check and Watch for "" and every service name from the
  last status it was sent. When no heartbeat came for STALE_S (the service's interpreter
  is stuck), it answers NOT_SERVING, so a liveness probe still finds a hung service.
- When the pipe closes (the service stopped or died), the child stops too.

Run as `python -m modalmesh.common.probe HOST PORT STALE_S NAME...`; it prints `port N` once
listening, or `error: ...` and exits 1.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5  # how often the service repeats its status
STALE_S = 10.0  # no heartbeat for this long: NOT_SERVING
START_TIMEOUT_S = 30.0


class ProbeProcess:
    """The child process serving the health-only port, and the service's side of its pipe."""

    def __init__(self, service: str, host: str, port: int, names: list[str], stale_s: float = STALE_S) -> None:
        self.service = service
        self._serving = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "modalmesh.common.probe", host, str(port), str(stale_s), *names],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._process.stdin is not None and self._process.stdout is not None  # both piped above
        self._stdin, self._stdout = self._process.stdin, self._process.stdout
        self.port = self._await_port()
        self._beat = threading.Thread(target=self._heartbeat, name=f"{service}-probe-heartbeat", daemon=True)
        self._beat.start()

    def _await_port(self) -> int:
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self._stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        line = found[0].strip() if found else ""
        if line.startswith("port "):
            return int(line.split()[1])
        self.stop()
        raise OSError(line.removeprefix("error: ") or f"{self.service}: the health-only port did not start in {START_TIMEOUT_S:.0f} s")

    def set_serving(self, serving: bool) -> None:
        with self._lock:
            self._serving = serving
        self._send()

    def _send(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            try:
                self._stdin.write("1\n" if self._serving else "0\n")
                self._stdin.flush()
            except (BrokenPipeError, OSError, ValueError):  # the child is gone: nothing to tell
                self._closed.set()

    def _heartbeat(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            self._send()

    def stop(self) -> None:
        with self._lock:
            self._closed.set()
            try:
                self._stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._stdout.close()


def serve(host: str, port: int, stale_s: float, names: list[str]) -> int:
    """The child: a health-only gRPC server whose status comes from stdin."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the service decides when to stop
    servicer = health.HealthServicer(experimental_non_blocking=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe"))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:  # newer grpcio raises where older ones return 0
        bound = 0
    if bound == 0:
        print(f"error: cannot listen on health port {host}:{port} (port in use?)", flush=True)
        return 1
    statuses = {True: health_pb2.HealthCheckResponse.SERVING, False: health_pb2.HealthCheckResponse.NOT_SERVING}
    last_beat = [time.monotonic()]
    shown: list[bool | None] = [None]
    serving = [False]
    lock = threading.Lock()

    def show(state: bool) -> None:
        with lock:
            if state != shown[0]:
                for name in ["", *names]:
                    servicer.set(name, statuses[state])
                shown[0] = state

    def watchdog() -> None:
        while True:
            time.sleep(min(HEARTBEAT_S, stale_s / 4))
            show(serving[0] and time.monotonic() - last_beat[0] < stale_s)

    show(False)
    server.start()
    threading.Thread(target=watchdog, daemon=True).start()
    print(f"port {bound}", flush=True)
    for line in sys.stdin:
        last_beat[0] = time.monotonic()
        serving[0] = line.strip() == "1"
        show(serving[0])
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
