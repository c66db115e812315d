"""An S3 API server on loopback (moto's server) for object-storage tests, and its fixtures.

The server is a real HTTP process (``moto_server``), reached through s3fs with an
``endpoint_url``: the tests exercise the same code path as a real bucket, not a mock of
fsspec. ``tests/conftest.py`` registers the fixtures (``pytest_plugins = ["s3_server"]``).

Fixtures:
    s3_server: session scope; yields a :class:`S3Server` with a bucket already created.
    s3_server_private: function scope; a server of its own that a test may stop midway
        (the "storage went away during a save" case) without disturbing other tests.

A killed moto server forgets its objects, so to check what survived an outage a test
reaches the server through a :class:`TcpProxy` (``server.proxy()``) and cuts the proxy:
for the client the endpoint is gone, while the server still holds the objects.

Example:
    >>> def test_save(s3_server):  # doctest: +SKIP
    ...     url = s3_server.url("run1")  # "s3://distengine-test/run1-<unique>"
    ...     DiskSaver(url, **s3_server.storage_options)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["S3Server", "TcpProxy", "s3_server", "s3_server_private", "start_s3_server"]

BUCKET = "distengine-test"
_REGION = "us-east-1"
_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            # Polling a port that is not open yet; the server prints nothing we could wait on.
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


class S3Server:
    """A running ``moto_server`` process with one bucket.

    Attributes:
        port: the loopback port it listens on.
        endpoint_url: ``http://127.0.0.1:<port>``.
        bucket: the bucket created at start.
    """

    def __init__(self, proc: subprocess.Popen, port: int, bucket: str = BUCKET):
        self._proc = proc
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.bucket = bucket

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for s3fs (and so for ``DiskSaver``/``Checkpoint.latest``/``load_objects``).

        Retries are kept short so that a stopped server fails a call within seconds.
        """
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": _REGION},
            "config_kwargs": {
                "retries": {"max_attempts": 1},
                "connect_timeout": 2,
                "read_timeout": 10,
            },
        }

    def proxy(self) -> TcpProxy:
        """A loopback TCP proxy to this server; the caller must :meth:`TcpProxy.stop` it."""
        return TcpProxy(self.port, self)

    def url(self, name: str = "ckpt") -> str:
        """A fresh ``s3://`` directory URL in the bucket (unique per call)."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): requests hang instead of failing, as with a
        stalled store. :meth:`resume` (or :meth:`stop`) undoes it."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Lets a paused server go on (SIGCONT)."""
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kills the server (idempotent): later requests fail with a connection error."""
        if self._proc.poll() is None:
            self._proc.kill()  # SIGKILL also ends a paused (stopped) process
            self._proc.wait(timeout=10)


class TcpProxy:
    """Forwards loopback connections to ``target_port`` until :meth:`stop` cuts them all.

    Attributes:
        storage_options: like :attr:`S3Server.storage_options`, through the proxy.
    """

    def __init__(self, target_port: int, server: S3Server):
        self._target = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        opts = server.storage_options
        opts["client_kwargs"] = {
            **opts["client_kwargs"],
            "endpoint_url": f"http://127.0.0.1:{self.port}",
        }
        self.storage_options = opts
        threading.Thread(target=self._accept, name="s3-proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Refuses new connections and resets open ones (idempotent)."""
        with self._lock:
            self._stopped = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def start_s3_server() -> S3Server:
    """Starts ``moto_server`` on a free loopback port and creates the test bucket.

    Example:
        >>> server = start_s3_server()  # doctest: +SKIP
        >>> server.stop()  # doctest: +SKIP
    """
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.fail(
            "moto_server is not installed: pip install -r requirements-ci.txt (moto[server])"
        )
    import boto3  # test dependencies: the S3 tests never skip silently
    import s3fs  # noqa: F401

    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = S3Server(proc, port)
    try:
        _wait_for_port(port, proc, _START_TIMEOUT_S)
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=_REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=server.bucket)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 API server for the whole session (tests use distinct directories in it)."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server_private() -> Iterator[S3Server]:
    """A server for one test, which the test may :meth:`~S3Server.stop` midway."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()
