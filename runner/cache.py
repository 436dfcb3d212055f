"""`itwin-run images` and `itwin-run prune`: what itwin-run made (images, SIFs), which of this project's step records
and image pin files still name it, when it was last used, and removing what nothing needs any more."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner import ui
from runner.engines import engine, engines
from runner.engines.base import Made, image_parts
from runner.errors import UserError
from runner.state import State

DAY = 86400.0
STAGE_GRACE = 600.0  # seconds: an untagged image younger than this may belong to a build in progress


@dataclass
class Entry:
    item: Made
    named_by: list[str] = field(default_factory=list)  # "workflow/step" of step records, pin files
    last_used: float | None = None


def _projects_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "itwin-run", "projects.json")


def remember(root: Path) -> None:
    """Note a project that runs here, so that `prune` in one project keeps what another one's records name."""
    path = _projects_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = []
    if str(root) in known:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(sorted({*known, str(root)}), indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: prune then sees only the project it runs in


def projects(root: Path) -> list[Path]:
    try:
        known = [Path(p) for p in json.loads(_projects_file().read_text())]
    except (OSError, ValueError, TypeError):
        known = []
    return [root, *(p for p in known if p != root and (p / ".itwin-run").is_dir())]


def _forms(ref: str) -> list[str]:
    """A reference as records write it, and as Docker lists an image pulled by digest: REPO:TAG@D is REPO@D."""
    if "@" not in ref:
        return [ref]
    name, digest = ref.split("@", 1)
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    return [ref, f"{repo}@{digest}"] if repo != name else [ref]


def inventory(root: Path) -> tuple[list[Entry], list[str]]:
    """Everything each engine made, with what names it in the projects itwin-run ran on this machine (`root`
    first); and a note per engine that could not be asked (no daemon, say)."""
    items: list[Made] = []
    notes = []
    for each in engines():
        try:
            items += each.made()
        except UserError as exc:
            notes.append(f"{each.name}: not listed ({exc})")
    named: dict[str, list[str]] = {}
    used: dict[str, float] = {}
    for project in projects(root):
        where = "" if project == root else f"{project}: "
        state = State(project)
        for path in sorted(state.steps.glob("**/*.json")) if state.steps.is_dir() else []:
            try:
                rec = json.loads(path.read_text())
                manifest = state.manifest(rec["run"])
            except (OSError, ValueError, KeyError, UserError):
                continue
            key = str(path.relative_to(state.steps).with_suffix(""))
            step = manifest.get("steps", {}).get(key.rsplit("/", 1)[-1], {})
            for part in image_parts(step.get("image") or ""):
                for form in _forms(part) if part else []:
                    named.setdefault(form, []).append(where + key)
        for pins in project.glob("**/*.images.json"):
            if ".itwin-run" in pins.parts:
                continue
            try:
                images = json.loads(pins.read_text()).get("images", {})
            except (OSError, ValueError, AttributeError):
                continue
            for ref in images.values() if isinstance(images, dict) else []:
                for form in (f for part in image_parts(str(ref)) for f in _forms(part)):
                    named.setdefault(form, []).append(where + str(pins.relative_to(project)))
        for m in state.manifests():
            for step in m.get("steps", {}).values():
                for form in (f for part in image_parts(step.get("image") or "") for f in _forms(part)
                             if step.get("start")):
                    used[form] = max(used.get(form, 0.0), float(step["start"]))
    for i in items:  # an image's dependency image is needed (and used) as long as the image is
        if i.needs and named.get(i.ref):
            named.setdefault(i.needs, []).append(f"(dependencies of {i.ref})")
        if i.needs and i.ref in used:
            used[i.needs] = max(used.get(i.needs, 0.0), used[i.ref])
    return [Entry(i, named.get(i.ref, []), used.get(i.ref)) for i in items], notes


def to_prune(entries: list[Entry], older_than: float | None, everything: bool) -> list[Entry]:
    """What prune removes: what no record or pin file names; with --older-than, also what was not used (or made,
    when never used) for that many days; untagged images (what an interrupted build left) once they are ten minutes
    old (a build may still be using younger ones); with --all, everything. Never what a container uses, nor the
    base."""
    now = time.time()
    out = []
    for e in entries:
        if e.item.busy or (not everything and e.item.ref.startswith("itwin-run/base:")):
            continue
        old = older_than is not None and now - (e.last_used or e.item.created) > older_than * DAY
        stale_stage = e.item.stage and now - e.item.created > STAGE_GRACE
        if everything or old or stale_stage or (not e.item.stage and not e.named_by):
            out.append(e)
    return out


def remove(entry: Entry) -> None:
    engine(entry.item.engine).remove(entry.item)


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def age(t: float | None) -> str:
    if not t:
        return "never"
    d = time.time() - t
    return f"{d / DAY:.0f}d ago" if d >= DAY else f"{d / 3600:.0f}h ago" if d >= 3600 else f"{d / 60:.0f}m ago"


def listing(where: Path) -> None:
    """Print what each engine made, with what names it (`itwin-run images`)."""
    entries, notes = inventory(where)
    for note in notes:
        ui.say(note, "yellow")
    print(f"{'ENGINE':<9}  {'IMAGE':<58}  {'OWN SIZE':>8}  {'MADE':>9}  {'USED':>9}  NAMED BY")
    for e in sorted(entries, key=lambda e: (e.item.engine, e.item.ref)):
        named = ", ".join(e.named_by) or ("left by a build" if e.item.stage else "-")
        print(f"{e.item.engine:<9}  {e.item.ref:<58}  {size(e.item.size):>8}  {age(e.item.created):>9}  "
              f"{age(e.last_used):>9}  {named}{'  (in use)' if e.item.busy else ''}")


def prune(where: Path, older_than: float | None, dry_run: bool, everything: bool) -> None:
    """Remove (or with dry_run, name) what no record or pin file names, and with older_than what was not used
    for that many days (`itwin-run prune`)."""
    entries, notes = inventory(where)
    for note in notes:
        ui.say(note, "yellow")
    doomed = to_prune(entries, older_than, everything)
    freed = 0
    for e in doomed:
        if not dry_run:
            try:
                remove(e)
            except UserError as exc:  # another image depends on it, say: the rest still go
                ui.say(f" {exc}", "yellow", prefix="kept:")
                continue
        freed += e.item.size
        print(f"{'would remove' if dry_run else 'removed'}  {e.item.engine}  {e.item.ref}  {size(e.item.size)}")
    ui.say(f"{'would free' if dry_run else 'freed'} about {size(freed)} ({len(doomed)} of {len(entries)})")
