"""SIFs and source overlays as OCI artifacts in a registry (`oras://`), through the oras library: a SIF with
Apptainer's own media types (so `apptainer pull oras://…` takes what itwin-run pushed, and the other way round), an
overlay as a squashfs file. A node that has the pin file then pulls its images' files and converts nothing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from runner.engines.apptainer.tool import plain_http
from runner.errors import UserError

SIF_CONFIG = "application/vnd.sylabs.sif.config.v1+json"
SIF_LAYER = "application/vnd.sylabs.sif.layer.v1.sif"
OVERLAY_LAYER = "application/vnd.itwin-run.squashfs.v1"  # a source overlay: `apptainer exec --overlay FILE:ro`
CHUNK = 64 * 2**20  # uploads in pieces of this size: a SIF of torch is gigabytes


def _client(ref: str):
    import oras.client

    host = ref.removeprefix("oras://").split("/", 1)[0]
    client = oras.client.OrasClient(hostname=host, insecure=plain_http(host))  # loopback: plain HTTP, as Docker's
    user, password = os.environ.get("ITWIN_RUN_REGISTRY_USER"), os.environ.get("ITWIN_RUN_REGISTRY_PASSWORD")
    if user and password:
        client.auth.set_basic_auth(user, password)
    return client


def _failed(what: str, exc: Exception) -> UserError:
    said = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
    return UserError(f"{what}: {said[0][:300]}")


def push_file(path: Path, target: str) -> str:
    """Push one file (a SIF, or an overlay) as the artifact HOST[:PORT]/NAME:TAG; its reference, oras://…@DIGEST."""
    sif = path.suffix == ".sif"
    client = _client(target)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as config:
        config.write("{}")
        config.flush()
        try:
            response = client.push(target=target, files=[f"{path}:{SIF_LAYER if sif else OVERLAY_LAYER}"],
                                   manifest_config=f"{config.name}:{SIF_CONFIG}" if sif else None,
                                   disable_path_validation=True, do_chunked=True, chunk_size=CHUNK, quiet=True)
        except Exception as exc:  # the library raises requests' and its own errors alike
            raise _failed(f"cannot push {path.name} to oras://{target}", exc) from None
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        raise UserError(f"the push of oras://{target} reported no digest")
    return f"oras://{target}@{digest}"


def pull_file(ref: str, dest: Path) -> None:
    """The artifact's file (its one layer) into dest, whole and checked against its digest, or nothing."""
    import oras.container

    name = ref.removeprefix("oras://")
    client = _client(name)
    container = oras.container.Container(name, registry=name.split("/", 1)[0])
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        layers = client.get_manifest(container).get("layers") or []
        if len(layers) != 1:
            raise UserError(f"{ref}: an artifact of {len(layers)} files, not one SIF or overlay")
        client.download_blob(container, layers[0]["digest"], str(partial))
        sha = hashlib.sha256()
        with open(partial, "rb") as f:
            while chunk := f.read(CHUNK):
                sha.update(chunk)
        if f"sha256:{sha.hexdigest()}" != layers[0]["digest"]:
            raise UserError(f"{ref}: what the registry sent does not match its digest")
        partial.replace(dest)
    except UserError:
        raise
    except Exception as exc:
        raise _failed(f"cannot pull {ref}", exc) from None
    finally:
        partial.unlink(missing_ok=True)
