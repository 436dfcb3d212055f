"""`itwin-run doctor`: what this machine offers for running workflows, and what to do about each gap.

Each engine module (runner/engines/) and executor module (runner/executors/) that has machine requirements gives a
`doctor(needs_gpu)` function returning Checks; this module adds the image-building side and puts them together."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from runner.checks import Check

if TYPE_CHECKING:
    from runner.engines import Engine
    from runner.site import Site


def registry_checks(refs: list[str], engine: Engine) -> list[Check]:
    """Reachability of the registries a workflow's prebuilt images name, and the engine's credentials for them."""
    out = []
    hosts = sorted({r.split("/", 1)[0] for r in refs if "/" in r and ("." in r.split("/", 1)[0] or ":" in r.split("/", 1)[0])})
    auths = engine.credentials() if hosts else set()
    for host in hosts:
        scheme = "http" if host.startswith(("127.", "localhost")) else "https"
        try:
            urllib.request.urlopen(f"{scheme}://{host}/v2/", timeout=5)
            status = "answers"
        except urllib.error.HTTPError as exc:
            status = "answers, asks for credentials" if exc.code == 401 else f"answers {exc.code}"
        except OSError as exc:
            out.append(Check("images", False, f"registry {host} unreachable ({exc})", "check the name and the network"))
            continue
        creds = host in auths or bool(os.environ.get("ITWIN_RUN_REGISTRY_USER"))
        needs = "credentials" in status
        out.append(Check("images", creds or not needs, f"registry {host} {status}" +
                         ("; credentials found" if creds else ""), f"`{engine.login.format(host=host)}`"))
    return out


def image_checks(refs: list[str], engine: Engine) -> list[Check]:
    from runner.images import BuildOptions

    out = []
    try:
        wheelhouse = BuildOptions.from_env().wheelhouse
    except Exception as exc:  # a wheelhouse that is set but broken: said, not raised
        return [Check("images", False, str(exc), "fix ITWIN_RUN_WHEELHOUSE or --wheelhouse")]
    if wheelhouse:
        wheels = list(wheelhouse.glob("*.whl"))
        out.append(Check("images", None, f"wheelhouse {wheelhouse}: {len(wheels)} wheels used in image builds"))
    else:
        out.append(Check("images", None, "no wheelhouse: image builds take every package from the index"))
    return out + registry_checks(refs, engine)


def diagnose(engine: str, executor: str, needs_gpu: bool, refs: list[str]) -> tuple[list[Check], bool]:
    """All checks, and whether what the engine and executor need is usable."""
    from runner.engines import engines
    from runner.executors import available, executor_class

    checks: list[Check] = []
    needed: set[str] = {engine, executor, "images"}
    installed = sorted(engines(), key=lambda e: e.name != engine)  # the engine asked about first
    for each in installed:
        checks += each.doctor(needs_gpu)
    for name in available():
        if (found := executor_class(name).doctor) is not None:
            checks += found(needs_gpu)
    checks += image_checks(refs, installed[0])
    usable = not any(c.ok is False and c.area in needed for c in checks)
    for c in checks:  # FAIL only for what this run needs: the rest is worth knowing
        if c.ok is False and c.area not in needed:
            c.ok, c.detail = None, f"{c.detail} (not needed for this run)"
    return checks, usable


def report(checks: list[Check], usable: bool, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"usable": usable, "checks": [asdict(c) for c in checks]}, indent=1))
        return
    for c in checks:
        print(c.line())
    print("usable" if usable else "not usable: see the FAIL lines above")


def site_checks(profile: Site, guarded: tuple[tuple[Path, str], ...]) -> list[Check]:
    """The site profile (`--site`): what it sets, and whether the folders it binds are there and allowed."""
    if not profile.name:
        return []
    from runner.errors import ValidationError

    checks = [Check("site", True, profile.said())]
    try:
        checks += [Check("site", True, f"binds {folder}") for folder in profile.folders(guarded)]
    except ValidationError as exc:
        checks += [Check("site", False, problem, "fix the site profile") for problem in exc.problems]
    return checks


def check(workflow: Path | None, root: Path | None, engine: str, executor: str, as_json: bool,
          profile: Site) -> bool:
    """`itwin-run doctor`: print the checks (for what `workflow` needs, when given); whether the run is usable."""
    from runner.engines import engine as declared
    from runner.engines import guarded

    engine = declared(engine).name  # an unknown one is a usage error naming those installed
    needs_gpu, refs = False, []
    if workflow is not None:
        from runner import workflow as wfmod

        wf = wfmod.load(workflow, root, guarded=guarded())
        needs_gpu = any(s.gpus for s in wf.steps)
        refs = [s.env.image for s in wf.steps if s.env.image]
    checks, usable = diagnose(engine, executor, needs_gpu, refs)
    site = site_checks(profile, guarded())
    usable = usable and all(c.ok is not False for c in site)
    report(site + checks, usable, as_json)
    return usable
