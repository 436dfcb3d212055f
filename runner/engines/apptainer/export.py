"""A SIF from a local Docker image the short way: the image's files streamed out of Docker (`docker export`) and
unpacked once, then one mksquashfs, as `apptainer build` does last. `apptainer build docker-daemon://` first copies
every layer into its cache gzip-compressed and unpacks them again: the MNIST training image converts in 109 s that
way here, in 19 s this way (bench/sif.py).

The SIF holds what Apptainer's own conversion puts there, made by Apptainer itself: `apptainer build --sandbox`
from an OCI layout that holds only the image's config (an empty layer) writes the environment script, runscript,
labels and base files of /.singularity.d for that config; `apptainer inspect --all` gives the inspect metadata;
`apptainer sif` puts the definition, the metadata, the OCI config and the file system together. Only root keeps the
files' owners and device nodes when unpacking, so other users' conversions go through `apptainer build`.

What differs from Apptainer's conversion: a container's file system, which `docker export` streams, has the files
Docker adds to every container (empty /etc/hosts, /etc/hostname, /etc/resolv.conf and /dev/console, /etc/mtab); of
those, /.dockerenv is left out, and Apptainer binds the host's over the others when it runs a step."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from runner.engines.apptainer.tool import mksquashfs
from runner.engines.base import scratch
from runner.errors import UserError

# `apptainer sif add --partarch`: Docker's architecture names.
ARCHES = {"386": 1, "amd64": 2, "arm": 3, "arm64": 4, "ppc64": 5, "ppc64le": 6, "mips": 7, "mipsle": 8, "mips64": 9,
          "mips64le": 10, "s390x": 11, "riscv64": 12}
DOCKER_ONLY = ".dockerenv"
CHOICE = "ITWIN_RUN_SIF_CONVERT"  # "apptainer": always Apptainer's own conversion


def converts_here(info: dict) -> bool:
    """Whether this process converts the image of `info` (docker inspect) itself."""
    return (os.environ.get(CHOICE) != "apptainer" and os.geteuid() == 0 and info.get("Architecture") in ARCHES
            and shutil.which("tar") is not None and mksquashfs() is not None)


def make_sif(exe: str, client, ref: str, info: dict, target: Path, compression: str, place: Path) -> None:
    """Write the SIF of Docker image `ref` (inspected as `info`) to `target`, made in a folder of its own in `place`."""
    config = {k: v for k, v in (info.get("Config") or {}).items() if v}
    work = scratch(place, "itwin-export")  # the files unpacked, then squashed: where the image fits twice
    squash = work / "root.sqfs"
    try:
        root = work / "root"
        root.mkdir()
        _unpack(client, ref, root)
        (root / DOCKER_ONLY).unlink(missing_ok=True)
        deffile = f"bootstrap: docker-daemon\nfrom: {ref}\n\n"
        _metadata(exe, config, info["Architecture"], work, deffile, ref)
        _merge(work / "meta", root, top=True)
        inspect = _run([exe, "inspect", "--all", str(root)], "reading the metadata of").stdout
        (work / "inspect-metadata.json").write_text(json.dumps(json.loads(inspect), separators=(",", ":")))
        (work / "oci-config.json").write_text(json.dumps(config, separators=(",", ":")))
        (work / "deffile").write_text(deffile)
        _run([mksquashfs() or "mksquashfs", str(root), str(squash), "-noappend", "-comp", compression, "-quiet", "-no-progress"],
             "squashing")
        target.unlink(missing_ok=True)
        _run([exe, "sif", "new", str(target)], "writing")
        for what, name in (("--datatype=1", "deffile"), ("--datatype=6", "inspect-metadata.json"),
                           ("--datatype=6", "oci-config.json")):
            _run([exe, "sif", "add", what, "--groupid=1", f"--filename={name}", str(target), str(work / name)],
                 "writing")
        _run([exe, "sif", "add", "--datatype=4", "--partfs=1", "--parttype=2", "--groupid=1",
              f"--partarch={ARCHES[info['Architecture']]}", str(target), str(squash)], "writing")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _merge(meta: Path, root: Path, top: bool = False) -> None:
    """Apptainer's files into the image's: /.singularity.d and the links beside it replace the image's own; of the
    base files and folders, those the image lacks are added (its own, /tmp's mode among them, are kept)."""
    for entry in meta.iterdir():
        dest = root / entry.name
        if top and (entry.name == ".singularity.d" or entry.is_symlink()):
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink(missing_ok=True)
            entry.rename(dest)
        elif not dest.exists() and not dest.is_symlink():
            entry.rename(dest)
        elif entry.is_dir() and not entry.is_symlink() and dest.is_dir():
            _merge(entry, dest)


def _unpack(client, ref: str, root: Path) -> None:
    """The image's files, as a container's, into `root`: owners, modes and extended attributes kept."""
    container = client.api.create_container(ref, command=["/"], network_disabled=True)["Id"]
    try:
        tar = subprocess.Popen(["tar", "-x", "-p", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C",
                                str(root)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdin is not None
        try:
            for chunk in client.api.export(container, chunk_size=1 << 20):
                tar.stdin.write(chunk)
        except BrokenPipeError:
            pass
        finally:
            tar.stdin.close()
        if tar.wait():
            raise UserError(f"unpacking {ref} failed: {tar.stderr.read().decode(errors='replace').strip()[-400:]}")
    finally:
        client.api.remove_container(container, force=True)


def _metadata(exe: str, config: dict, arch: str, work: Path, deffile: str, ref: str) -> None:
    """work/meta: Apptainer's /.singularity.d (and base files) for an image of this config."""
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, media: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    layer = blob(b"\0" * 1024, "application/vnd.oci.image.layer.v1.tar")  # an empty tar
    image = {"architecture": arch, "os": "linux", "config": config,
             "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": blob(json.dumps(image).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": [layer]}
    index = {"schemaVersion": 2,
             "manifests": [blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    meta = work / "meta"
    _run([exe, "-q", "build", "--disable-cache", "--sandbox", str(meta), f"oci:{layout}"], "making the metadata of")
    # What it says of its source is said of the Docker image, as `apptainer build docker-daemon://REF` says it.
    (meta / ".singularity.d" / "Singularity").write_text(deffile)
    labels_file = meta / ".singularity.d" / "labels.json"
    labels = json.loads(labels_file.read_text())
    labels["org.label-schema.usage.singularity.deffile.bootstrap"] = "docker-daemon"
    labels["org.label-schema.usage.singularity.deffile.from"] = ref
    labels_file.write_text(json.dumps(labels, indent="\t"))


def _run(cmd: list[str], doing: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-6:]
        raise UserError(f"{doing} a SIF ({' '.join(cmd[:3])}) failed:\n" + "\n".join("  " + ln for ln in tail))
    return proc
