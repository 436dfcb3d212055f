from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "tests" / "toy"
ITWIN_RUN = [str(Path(sys.executable).parent / "itwin-run")]
LABEL = "org.itwin-run.managed=1"
# Workers side by side share the CPUs: each worker's steps are told their share as thread counts (ITWIN_RUN_THREADS),
# as itwin-run tells its own steps side by side (two PyTorch trainings with a thread per CPU each run ~4x slower).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("ITWIN_RUN_THREADS", str(max(1, len(os.sched_getaffinity(0)) // WORKERS)))


def itwin(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, the way a user does."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*ITWIN_RUN, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    client = docker.from_env()
    client.ping()  # a test that needs the daemon fails (not skips) without one: `make` starts it
    return client


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    dest = tmp_path / "toy"
    shutil.copytree(TOY, dest, ignore=shutil.ignore_patterns("data", ".itwin-run"))
    return dest


# `make test` runs the real tier on pytest-xdist workers (--dist loadgroup): a test with an xdist_group runs on the
# worker that runs its whole group. "machine" holds the tests of the services one machine has one of (the SLURM
# cluster, the test user and their Podman: fixtures a worker would start and stop under another's feet); a module
# whose tests share a module fixture (a trained model, a registry) names a group of its own. Tests marked `alone`
# read or change the whole daemon's state (stopped, prune) and run in a pass of their own, beside the fast tier (no
# daemon there); those also marked `idle` (both CPUs, every process) run in a pass with nothing beside it.
MACHINE = {"user", "podman_user", "slurm_env"}
GROUP = pytest.StashKey[str]()
FIRST = ("machine", "mnist", "surrogate", "registry")  # the longest groups start first, so the workers end together


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items: list[pytest.Item]) -> None:
    for item in items:
        groups = [m.args[0] for m in item.iter_markers("xdist_group")]
        if MACHINE & set(item.fixturenames):
            if groups:
                raise pytest.UsageError(f"{item.nodeid}: uses {sorted(MACHINE & set(item.fixturenames))}, the "
                                        f"'machine' group, and names group {groups[0]!r}")
            item.add_marker(pytest.mark.xdist_group("machine"))
            groups = ["machine"]
        item.stash[GROUP] = groups[0] if groups else ""
    items.sort(key=lambda i: FIRST.index(i.stash[GROUP]) if i.stash[GROUP] in FIRST else len(FIRST))


@pytest.hookimpl(trylast=True)  # after xdist named each grouped test `NODEID@GROUP`, which its scheduler reads
def pytest_collection_finish(session: pytest.Session) -> None:
    if getattr(session.config.option, "loadgroup", False):
        lost = [i.nodeid for i in session.items if i.stash[GROUP] and not i.nodeid.endswith("@" + i.stash[GROUP])]
        if lost:  # pytest 9.2 and xdist 3.8: pytest-dev/pytest-xdist#1386
            pytest.exit(f"pytest-xdist did not group {lost[0]}: this pytest and pytest-xdist do not go together "
                        "(pyproject.toml pins pytest below 9.2)", returncode=3)


def run_ids(project: Path) -> list[str]:
    """The ids of the project's runs, oldest first (what its containers carry as org.itwin-run.run)."""
    return sorted(p.name for p in (project / ".itwin-run" / "runs").glob("*"))


def runs_under(base: Path) -> set[str]:
    """The ids of the runs whose projects lie (up to four folders deep) under `base`."""
    return {p.name for depth in range(1, 5) for p in base.glob("*/" * depth + ".itwin-run/runs/*")}


@pytest.fixture
def no_leftovers(docker_client, tmp_path_factory):
    """No container of this worker's runs is left once the test ends (other workers' runs may be running)."""
    yield
    base = tmp_path_factory.getbasetemp()
    for _ in range(50):  # the run's network holder is killed at the end and removed by the daemon right after
        labelled = docker_client.containers.list(ignore_removed=True, all=True, filters={"label": "org.itwin-run.run"})
        mine = runs_under(base) if labelled else set()
        left = [c for c in labelled if c.labels.get("org.itwin-run.run") in mine]
        if not left:
            return
        time.sleep(0.1)
    assert not left, f"containers left behind: {[c.name for c in left]}"


SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """This checkout built as a wheel, as pip installs it."""
    dist = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                          "-w", str(dist)], cwd=dist, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return next(dist.glob("*.whl"))


@pytest.fixture(scope="session")
def user(wheel):
    """A non-root user with the wheel installed (tests.services.User)."""
    from tests.services import make_user

    return make_user("itwinuser", wheel)


@pytest.fixture(scope="session")
def podman_user(user):
    """The non-root user with rootless Podman, the base image and its parent loaded from Docker's."""
    from tests.services import podman_base, rootless_podman

    rootless_podman(user)
    podman_base(user, ITWIN_RUN[0])
    return user


@pytest.fixture(scope="session")
def apptainer_env() -> dict[str, str]:
    """A real Apptainer from ../shared/hpc/apptainer (root; idempotent), its wrapper first on PATH."""
    setup = SHARED / "hpc" / "apptainer" / "setup-apptainer.sh"
    deb = SHARED / "hpc" / "apptainer" / "apptainer_1.4.5-2_amd64.deb"
    res = subprocess.run(["bash", str(setup), "--quiet"], env={**os.environ, "APPLAB_APPTAINER_DEB": str(deb)},
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return {"PATH": f"/tmp/applab/bin:{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def slurm_env(apptainer_env):
    res = subprocess.run(["bash", str(SHARED / "hpc" / "slurm" / "start-slurm.sh")], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    env = dict(apptainer_env)
    if not Path("/etc/slurm/slurm.conf").exists():
        env["SLURM_CONF"] = "/tmp/slurmlab/etc/slurm.conf"
    yield env
    subprocess.run(["bash", str(SHARED / "hpc" / "slurm" / "stop-slurm.sh")], capture_output=True, timeout=120)


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_in_their_test():
    """itwinai called in-process sets MLflow's process-wide tracking and registry URIs (and their environment
    variables, for subprocesses): each test starts from none, as a fresh `itwinai` process does."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        registry._registry_uri = None
        tracking._tracking_uri = None


def source_project(root: Path, word: str = "first") -> Path:
    """A project whose one step has a source package (env.source: ./mypkg, with a console script) and writes
    mypkg.WORD to data/out/word.txt; set_word() edits the source."""
    root.chmod(0o755)
    pkg = root / "mypkg"
    (pkg / "mypkg").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = '
                                        '"setuptools.build_meta"\n[project]\nname = "mypkg"\nversion = "1.0"\n'
                                        '[project.scripts]\nmypkg-say = "mypkg:say"\n')
    set_word(root, word)
    (root / "req.txt").write_text("# the base image only\n")
    (root / "say.py").write_text("import subprocess, sys\nimport mypkg\nsubprocess.run(['mypkg-say'], check=True)\n"
                                 "open(sys.argv[2] + '/word.txt', 'w').write(mypkg.WORD + '\\n')\n")
    (root / "wf.yml").write_text("datasets:\n  out: {location: ./data/out}\nsteps:\n  - say:\n      output: out\n"
                                 "      command: python say.py\n      env: {file: req.txt, source: [./mypkg]}\n")
    return root


def set_word(root: Path, word: str) -> None:
    (root / "mypkg" / "mypkg" / "__init__.py").write_text(f"WORD = {word!r}\ndef say():\n    print('script', WORD)\n")



@pytest.fixture(scope="session")
def validate_crate(tmp_path_factory):
    """The RO-Crate validator for the provenance-run-crate profile at REQUIRED severity, offline: its HTTP cache
    seeded with the JSON-LD context the rocrate package ships (../shared/tools). Returns verdict(CRATE_DIR)."""
    cache = tmp_path_factory.mktemp("roc-cache") / "http_cache"
    seed = subprocess.run([sys.executable, str(SHARED / "tools" / "rocrate-validator-offline.py"), f"{cache}.sqlite"],
                          capture_output=True, text=True)
    assert seed.returncode == 0, seed.stderr

    def verdict(crate: Path) -> dict:
        out = crate.parent / f"{crate.name}.verdict.json"
        res = subprocess.run([str(Path(sys.executable).parent / "rocrate-validator"), "-y", "validate", "-p",
                              "provenance-run-crate", "--no-auto-profile", "--offline", "--skip-availability-check",
                              "--cache-path", str(cache), "-f", "json", "-o", str(out), str(crate)],
                             capture_output=True, text=True, timeout=300)
        assert out.is_file(), res.stdout[-2000:] + res.stderr[-2000:]
        return json.loads(out.read_text())
    return verdict
