"""The wheelhouse, served to a build over HTTP on this machine's loopback (Dockerfile.pip's ITWIN_WHEELS): pip in
the build finds the wheels there, so they are neither sent in the build context nor kept in a layer, and the
dependencies need no second build stage to leave them out. The MNIST training image's dependencies (1.7 GB, the CPU
torch wheel from the wheelhouse) were copied from that stage into the image in ~45 s of a 122 s build."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

from runner.errors import UserError


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def served(folder: Path, daemon: str) -> Iterator[str]:
    """The URL of `folder`'s listing (what pip's --find-links reads) on 127.0.0.1, while the block runs; builds
    reach it from a daemon on this machine only (`daemon`, docker-py's base URL: a unix socket's)."""
    if not daemon.startswith("http+docker://"):
        raise UserError(f"the wheelhouse {folder} reaches builds only from a Docker daemon on this machine (this one is "
                        f"{daemon}): --wheelhouse none, or build there")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
