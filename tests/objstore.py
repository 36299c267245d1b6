"""An S3 API server on 127.0.0.1 for the tests (moto's server mode, as s3fs and zarr test
with), and a proxy that adds latency to every request."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Self

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
"""Fake credentials moto accepts (never real ones)."""


@dataclass
class S3Server:
    """moto's S3 server in a thread of this process, bound to 127.0.0.1."""

    endpoint: str = ""

    def __enter__(self) -> Self:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *_) -> None:
        self._server.stop()

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The environment a client of this server needs."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint or self.endpoint}

    def new_bucket(self) -> str:
        import boto3

        name = f"b-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **_boto(CREDENTIALS)).create_bucket(
            Bucket=name)
        return name


def _boto(env: dict) -> dict:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


_METHODS = (b"GET ", b"PUT ", b"HEAD ", b"POST ", b"DELETE ")


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) that holds
    every HTTP request ``delay_s`` before passing it on (request bodies are not delayed)."""

    def __init__(self, upstream: str, delay_s: float):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.delay_s = (host, int(port)), delay_s
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listen.getsockname()[1]}"
        self.requests = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._listen.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listen.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for a, b, delay in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, delay), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delay: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                if delay and data.startswith(_METHODS):
                    self.requests += 1
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
