"""What the tests and the benchmarks share: services they start on loopback themselves, and project edits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(root: Path, user: str | None = None, password: str | None = None) -> tuple[str, subprocess.Popen]:
    """A CNCF Distribution registry (Debian's docker-registry) on 127.0.0.1, storage under root; with user and
    password it asks for them (htpasswd, bcrypt)."""
    exe = shutil.which("docker-registry")
    assert exe, "docker-registry is not installed: `make` installs it (Debian package docker-registry)"
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: " + str(root / "data") +
        "\n  delete: {enabled: true}\nhttp:\n  addr: 127.0.0.1:" + str(port) + "\nlog: {level: error}\n")
    if user and password:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # glibc's libxcrypt makes bcrypt hashes, the only kind the registry reads

        # the least bcrypt cost (2^4 rounds): the registry checks the password on every request, and at the default
        # 2^12 that is 0.2 s of CPU each, a push's hundreds of them included
        salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)
        (root / "htpasswd").write_text(f"{user}:{crypt.crypt(password, salt)}\n")
        with open(root / "config.yml", "a") as f:
            f.write(f"auth:\n  htpasswd:\n    realm: itwin\n    path: {root / 'htpasswd'}\n")
    proc = subprocess.Popen([exe, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            break
        except urllib.error.HTTPError:  # 401: up, and asking for credentials
            break
        except OSError:
            time.sleep(0.1)
    return f"127.0.0.1:{port}", proc


@contextlib.contextmanager
def registry(root: Path, user: str | None = None, password: str | None = None) -> Iterator[str]:
    """start_registry's registry for a `with` block: stopped after it, and the daemon's names of what was pushed to
    it or pulled from it removed (they would name a registry that is gone)."""
    addr, proc = start_registry(root, user, password)
    try:
        yield addr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        forget_registry(addr)


def forget_registry(addr: str) -> None:
    """Remove the local names (tags and digests) under `addr/`; an image with no other name goes with its last."""
    import docker

    client = docker.from_env()
    for image in client.images.list():
        for name in [*(image.attrs.get("RepoTags") or []), *(image.attrs.get("RepoDigests") or [])]:
            if name.startswith(f"{addr}/"):
                try:
                    client.images.remove(name)
                except docker.errors.APIError:  # gone with another name of it
                    pass


def start_mlflow_server(backend: str, cwd: Path, artifacts: Path | None = None) -> tuple[str, subprocess.Popen]:
    """A real `mlflow server` on 127.0.0.1 (the test venv's), answering /health."""
    import sys

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", backend]
    if artifacts:
        cmd += ["--artifacts-destination", str(artifacts)]
    # No GenAI job runner (8 huey processes, and a folder in /dev/shm that MLflow never removes): these tests read runs
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    return uri, proc


def fresh_venv(venv: Path, package: Path) -> Path:
    """A new venv with `package` (a wheel or sdist of itwin-run) installed from the file alone; its dependencies come
    from this environment (a .pth line: no network needed). Returns the venv's bin folder."""
    import sys
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # its own setuptools (an old one, bundled with venv) would shadow this environment's, which builds from the sdist
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    site = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          str(package)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return venv / "bin"


def change_packages(env: Path, marker: int) -> None:
    """A real change of an env file's packages that installs nothing new (setuptools is in the base image, and no
    release is 0.0.MARKER): a new image, where an edited comment makes none."""
    line = f"setuptools!=0.0.{marker}"
    text = env.read_text()
    if env.suffix in (".yml", ".yaml"):
        assert re.search(r"- pip: \[.*\]", text), "a conda env file with a one-line pip list"
        env.write_text(re.sub(r"- pip: \[.*\]", f'- pip: ["{line}"]', text))
    else:
        kept = "".join(t for t in text.splitlines(keepends=True) if "setuptools!=0.0." not in t)
        env.write_text(kept + line + "\n")


class User:
    """A non-root user (useradd) with itwin-run installed from its wheel into a venv of their own: the way people on
    a shared machine run it. Commands run with a clean login-like environment (no root's PATH or DOCKER_HOST)."""

    def __init__(self, name: str):
        import pwd

        self.name = name
        self.home = Path(pwd.getpwnam(name).pw_dir)
        self.bin = self.home / "venv" / "bin"

    def run(self, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: int = 900) -> subprocess.CompletedProcess:
        clean = {"PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.home), "USER": self.name,
                 "LOGNAME": self.name, "LANG": "C.UTF-8", "COLUMNS": "200", **(env or {})}
        return subprocess.run(["runuser", "-u", self.name, "--", "env", "-i", *[f"{k}={v}" for k, v in clean.items()],
                               *argv], cwd=cwd or self.home, capture_output=True, text=True, timeout=timeout)

    def itwin(self, *args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: int = 900) -> subprocess.CompletedProcess:
        return self.run([str(self.bin / "itwin-run"), *args], cwd=cwd, env=env, timeout=timeout)

    def project(self, src: Path, name: str) -> Path:
        """A copy of project `src` in the user's home, theirs."""
        dest = self.home / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("data", ".itwin-run"))
        subprocess.run(["chown", "-R", f"{self.name}:{self.name}", str(dest)], check=True)
        return dest


def make_user(name: str, wheel: Path) -> User:
    """Create the user (idempotent) and install `wheel` into ~/venv with Debian's python3, its dependencies from the
    index as anyone's pip takes them."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)  # with a subuid/subgid range
    user = User(name)
    shared = Path("/tmp") / f"itwin-wheel-{name}"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(mode=0o755)
    copy = Path(shutil.copy(wheel, shared))
    copy.chmod(0o644)
    res = user.run(["bash", "-c", f"rm -rf ~/venv && /usr/bin/python3 -m venv ~/venv && ~/venv/bin/pip install -q "
                                  f"--disable-pip-version-check {copy}"], timeout=600)
    shutil.rmtree(shared, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return user


def rootless_podman(user: User, fuse: bool = False) -> None:
    """Rootless Podman for `user` on overlay storage: the kernel's own (rootless overlay, Linux 5.13 and later, as
    here), or through fuse-overlayfs (`make` installs both; with Podman's vfs default every container copies its whole
    image, and --userns=keep-id breaks). A store made the other way is reset first."""
    conf = user.home / ".config" / "containers" / "storage.conf"
    text = '[storage]\ndriver = "overlay"\n' + (
        '[storage.options.overlay]\nmount_program = "/usr/bin/fuse-overlayfs"\n' if fuse else "")
    if conf.is_file() and conf.read_text() != text:
        user.run(["podman", "system", "reset", "--force"])
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    subprocess.run(["chown", "-R", f"{user.name}:{user.name}", str(user.home / ".config")], check=True)
    res = user.run(["podman", "info", "--format", "{{.Store.GraphDriverName}}"])
    assert res.returncode == 0 and res.stdout.strip() == "overlay", res.stderr[-2000:]


def podman_base(user: User, itwin_run: str) -> str:
    """The base image and its parent, from Docker (root's `itwin_run base`) into the user's Podman through
    `itwin-run load`, as a site without a registry gets them; the base's reference."""
    import docker

    client = docker.from_env()
    base = subprocess.run([itwin_run, "base"], capture_output=True, text=True, cwd=user.home)
    assert base.returncode == 0, base.stderr[-2000:]
    ref = base.stdout.strip()
    archive = user.home / "archive"
    archive.mkdir(exist_ok=True)
    parents = [r for r in ("python:3.11-slim", "itwin-run/parent:bookworm") if client.images.list(name=r)]
    for name in [parents[0], ref]:
        with open(archive / (name.replace("/", "_").replace(":", "_") + ".tar"), "wb") as f:
            for chunk in client.images.get(name).save(named=name):
                f.write(chunk)
    subprocess.run(["chown", "-R", f"{user.name}:", str(archive)], check=True)
    loaded = user.itwin("load", "--engine", "podman", str(archive), cwd=user.home)
    shutil.rmtree(archive, ignore_errors=True)
    assert loaded.returncode == 0 and ref in loaded.stderr, loaded.stderr[-2000:]
    return ref


def wait_for(check, tries: int = 100, every: float = 0.1):
    """check() until it is truthy, `tries` times at most (a hang guard, not a measure); its last value."""
    for _ in range(tries):
        value = check()
        if value:
            return value
        time.sleep(every)
    return check()


class Browser:
    """Headless Chromium driven over the DevTools protocol (websocket-client): open a page, evaluate JavaScript."""

    def __init__(self, profile: Path):
        import websocket

        port = free_port()
        # its org.chromium.Chromium.* folder (a socket: a short path) in one of ours, removed in close()
        self.scratch = Path(tempfile.mkdtemp(prefix="itwin-chromium-"))
        self.proc = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                                      f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "TMPDIR": str(self.scratch)})
        tabs = wait_for(lambda: _tabs(port), tries=300)
        self.ws = websocket.create_connection(next(t for t in tabs if t["type"] == "page")["webSocketDebuggerUrl"],
                                              timeout=30)
        self.calls = 0

    def call(self, method: str, **params):
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.calls:
                return msg.get("result")

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def value(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _tabs(port: int):
    try:
        return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
    except OSError:
        return None


def probe_wheelhouse(root: Path, word: str) -> Path:
    """root/wheelhouse with one wheel no index has, itwin-wh-probe 1.0, whose WORD is `word`; root/req.txt names it,
    and root/wf.yml is one step that prints `probe WORD`."""
    import sys

    probe = root / "probe"
    (probe / "itwin_wh_probe").mkdir(parents=True)
    (probe / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = '
                                          '"setuptools.build_meta"\n[project]\nname = "itwin-wh-probe"\nversion = "1.0"\n')
    (probe / "itwin_wh_probe" / "__init__.py").write_text(f"WORD = {word!r}\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "wheelhouse"), str(probe)], check=True)
    (root / "req.txt").write_text("itwin-wh-probe==1.0\n")
    (root / "wf.yml").write_text("steps:\n  - say:\n      command: python -c \"import itwin_wh_probe as p; "
                                 "print('probe', p.WORD)\"\n      env: {file: req.txt}\n")
    return root / "wheelhouse"
