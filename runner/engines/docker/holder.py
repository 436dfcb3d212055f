"""The run's network holder."""

from __future__ import annotations

import threading
from typing import Any

from runner.engines.docker.client import GONE, UNPRIVILEGED, Waiter, security_options


class NetworkHolder:
    """A sleeping container whose network namespace every step of a run joins (as a Kubernetes pod's containers
    do): steps keep Docker's default bridge networking, and a step's start skips setting up a network of its own,
    which is most of what a short step costs. The first step's container is created while the holder starts."""

    def __init__(self, api: Any, image: str, labels: dict[str, str]):
        self.api, self.id, self.error = api, "", ""
        self._created = threading.Event()
        self._thread = threading.Thread(target=self._start, args=(image, labels), daemon=True)
        self._thread.start()

    def _start(self, image: str, labels: dict[str, str]) -> None:
        try:
            host = self.api.create_host_config(init=True, auto_remove=True, **security_options())
            self.id = self.api.create_container(image, command=["sleep", "infinity"], user=UNPRIVILEGED, labels=labels,
                                                host_config=host, detach=True)["Id"]
            self._created.set()
            self.api.start(self.id)
        except GONE as exc:
            self.error = str(exc)
        finally:
            self._created.set()

    def network_mode(self) -> str | None:
        """`container:ID` once the holder exists (a container may be created before the holder runs, not started: see
        running()); None (each step gets its own network) if it could not be created."""
        self._created.wait()
        return f"container:{self.id}" if self.id and not self.error else None

    def running(self) -> bool:
        """Whether the holder started (waits for it): a step that joins it starts after."""
        self._thread.join()
        return bool(self.id) and not self.error

    def remove(self, wait: bool = False) -> None:
        """Stop it; the daemon removes it (auto-remove), so a run that ends well need not wait for that (`wait`: an
        interrupted one does, so that nothing of it is left when it exits). SIGTERM, not SIGKILL: the daemon answers
        a SIGKILL only once the container is down, a SIGTERM at once (tini passes it to `sleep`, which ends at it)."""
        self._thread.join()
        if not self.id:
            return
        try:
            if wait:
                gone = Waiter(self.api, self.id, condition="removed")
            self.api.kill(self.id, signal="SIGTERM")
            if wait:
                gone.join(timeout=10)
        except GONE:
            try:
                self.api.remove_container(self.id, force=True)
            except GONE:
                pass
