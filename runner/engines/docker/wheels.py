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
from typing import Any

from runner.errors import UserError


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def _unreachable(api: Any) -> str | None:
    """Why a build of this daemon cannot reach this machine's loopback on the host's network, if it cannot: a daemon
    elsewhere, or rootless Docker (its "host" network is RootlessKit's; rootless Podman's is the host's)."""
    if not api.base_url.startswith("http+docker://"):  # a unix socket here, not tcp:// or ssh://
        return f"the Docker daemon is not on this machine ({api.base_url})"
    rootless = any("rootless" in option for option in api.info().get("SecurityOptions") or [])
    podman = any("podman" in c.get("Name", "").lower() for c in api.version().get("Components") or [])
    return "rootless Docker builds on a network of their own" if rootless and not podman else None


@contextlib.contextmanager
def served(folder: Path, api: Any) -> Iterator[str]:
    """The URL of `folder`'s listing (what pip's --find-links reads) on 127.0.0.1, while the block runs, for a build
    of the daemon `api` (docker-py's APIClient) talks to. Where its builds cannot reach it, a UserError: pip would
    take the packages from the index instead (a CUDA torch for the CPU one of the wheelhouse, say)."""
    if why := _unreachable(api):
        raise UserError(f"the wheelhouse {folder} reaches builds only on this machine's network, and {why}: "
                        "--wheelhouse none (or ITWIN_RUN_WHEELHOUSE=none), or build where it can")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
