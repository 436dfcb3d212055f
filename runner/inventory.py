"""`itwin-run images` and `itwin-run prune`: what itwin-run made (images, SIFs), which of this project's step records
and image pin files still name it, when it was last used, and removing what nothing needs any more."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner import ui
from runner.engines import engine, engines
from runner.engines.base import Made, image_parts
from runner.errors import UserError
from runner.places import own_cache
from runner.state import State

DAY = 86400.0
DEPENDENCY = "(dependencies of "  # what names a dependency image: the image built on it
STAGE_GRACE = 600.0  # seconds: an untagged image younger than this may belong to a build in progress


@dataclass
class Entry:
    item: Made
    named_by: list[str] = field(default_factory=list)  # "workflow/step" of step records, pin files
    last_used: float | None = None
    ours: bool = False  # named by the project `images` and `prune` run in (or its dependency image is)


def _projects_file() -> Path:
    return own_cache() / "projects.json"


def _known(path: Path) -> list[str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []


def remember(root: Path) -> None:
    """Note a project that runs here, so that `prune` in one project keeps what another one's records name. Noting
    a new one drops those whose state is not there (temporary folders; one on a file system not mounted now is noted
    again at its next run): the list, which every run reads, stays short."""
    path = _projects_file()
    if str(root) in _known(path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # runs that start together: each one's project is kept
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            kept = {p for p in _known(path) if Path(p, ".itwin-run").is_dir()}
            tmp.write_text(json.dumps(sorted({*kept, str(root)}), indent=1))
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


def inventory_of(root: Path) -> tuple[list[Entry], list[str]]:
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
    ours: set[str] = set()
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
        if project == root:  # projects() lists it first
            ours = set(named)
    for i in items:  # an image's dependency image is needed (and used) as long as the image is
        if i.needs and named.get(i.ref):
            named.setdefault(i.needs, []).append(f"{DEPENDENCY}{i.ref})")
            if i.ref in ours:
                ours.add(i.needs)
        if i.needs and i.ref in used:
            used[i.needs] = max(used.get(i.needs, 0.0), used[i.ref])
    return [Entry(i, named.get(i.ref, []), used.get(i.ref), i.ref in ours) for i in items], notes


def _names(e: Entry, room: int, mine: set[str] | None) -> str:
    """What names an entry, cut to `room` characters with a count of the rest: this project's step records and pin
    files, then `(dependencies of IMAGE)`; the other projects' only when `mine` (this project's images) is None."""
    def order(n: str) -> int:  # 0 this project's, 1 a dependency note, 2 another project's (it starts with its folder)
        needed_by = n.removeprefix(DEPENDENCY).removesuffix(")") if n.startswith(DEPENDENCY) else None
        if n.startswith("/") or (needed_by is not None and mine is not None and needed_by not in mine):
            return 2
        return 1 if needed_by is not None else 0

    names = sorted(e.named_by, key=order)
    if mine is not None:
        names = [n for n in names if order(n) < 2]
    names = [f"{Path(n.split(': ', 1)[0]).name}: {n.split(': ', 1)[1]}" if n.startswith("/") else n for n in names]
    busy = "  (in use)" if e.item.busy else ""
    out = names[:1] or ["left by a build" if e.item.stage else "-"]
    for n in names[1:]:
        if len(", ".join([*out, n])) + len(f" +{len(names)} more{busy}") > room:
            break
        out.append(n)
    rest = (f" +{len(names) - len(out)} more" if len(out) < len(names) else "") + busy
    if len(out[0]) + len(rest) > room:  # cut from the left: the step's name is at the end
        out[0] = "…" + out[0][len(out[0]) + len(rest) - room + 1:]
    return ", ".join(out) + rest


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
    return f"{d / DAY:.0f}d" if d >= DAY else f"{d / 3600:.0f}h" if d >= 3600 else f"{d / 60:.0f}m"


def listing(where: Path, everything: bool = False) -> None:
    """Print what each engine made, with what names it (`itwin-run images`): what this project names and what
    nothing names (what `prune` would remove), or with `everything` what every project names, one line each in the
    terminal's width (100 columns without one)."""
    entries, notes = inventory_of(where)
    for note in notes:
        ui.say(note, "yellow")
    shown = sorted((e for e in entries if everything or e.ours or not e.named_by),
                   key=lambda e: (e.item.engine, e.item.ref))
    stores = {e.name: str(store) for e in engines() if (store := e.store())}  # their images are files in a folder
    refs = {id(e): e.item.ref.removeprefix(stores.get(e.item.engine, "\0") + os.sep) for e in shown}  # by file name
    wide = max((len(r) for r in refs.values()), default=5)
    kind = max((len(e.item.engine) for e in shown), default=6)
    head = f"{'ENGINE':<{kind}}  {'IMAGE':<{wide}}  {'OWN SIZE':>8}  {'USED':>5}  "
    room = max(15, shutil.get_terminal_size((100, 24)).columns - len(head))
    print(head + "NAMED BY")
    mine = None if everything else {e.item.ref for e in entries if e.ours}
    for e in shown:
        print(f"{e.item.engine:<{kind}}  {refs[id(e)]:<{wide}}  {size(e.item.size):>8}  {age(e.last_used):>5}  "
              f"{_names(e, room, mine)}")
    if len(shown) < len(entries):
        hidden = [e for e in entries if e not in shown]
        print(f"and {len(hidden)} more that only other projects name ({size(sum(e.item.size for e in hidden))}): "
              "`itwin-run images --all` lists them")
    for name in sorted({e.item.engine for e in shown if refs[id(e)] != e.item.ref}):  # where the names are
        print(f"the {name} images are files in {stores[name]}")


def prune(where: Path, older_than: float | None, dry_run: bool, everything: bool) -> None:
    """Remove (or with dry_run, name) what no record or pin file names, and with older_than what was not used
    for that many days (`itwin-run prune`)."""
    entries, notes = inventory_of(where)
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
