"""Safe by default: hostile but well-formed workflows are refused before anything is built or started (exit 2,
one line each, no traceback). Fast tier: no daemon; the engine-side guarantees are tested in test_security.py."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.cli import main
from runner.policy import mask_env, mount_problem
from tests.test_hostile import PYTHONISH

REFUSED = ["/var/run", "/run", "/var/run/docker.sock", "/etc", "/etc/ssl", "/usr/lib", "/proc", "/sys/kernel", "/dev",
           "/boot", "/bin", "/sbin", "/lib", "/var/lib/docker", "/var", "/", "~", "~/.ssh", "~/.docker", "~/.config/x",
           "/home"]
TRIED = {"documents": 0}


def valid(location: str = "./data/out", **step_extra) -> dict:
    return {"datasets": {"out": {"location": location}},
            "steps": [{"make": {"output": "out", "command": "python make.py", "env": {"file": "env.txt"}, **step_extra}}]}


def check_refused(doc: dict | str, extra_args: tuple[str, ...] = ()) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "env.txt").write_text("")
        Path(tmp, "etc-link").symlink_to("/etc")
        wf = Path(tmp, "wf.yml")
        wf.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        import io
        import sys
        err = io.StringIO()
        old, sys.stderr = sys.stderr, err
        try:
            with pytest.raises(SystemExit) as exit_info:
                main(["--dry-run", *extra_args, str(wf), "--root", tmp])
        finally:
            sys.stderr = old
    TRIED["documents"] += 1
    text = err.getvalue()
    assert exit_info.value.code == 2, text
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and all(re.match(r"^(.+:\d+: \S.*: .+|error: .+)$", ln) for ln in lines), text
    assert not PYTHONISH.search(text), text
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(REFUSED), via=st.sampled_from(["direct", "dotdot", "symlink"]))
def test_refused_locations_by_any_path(where, via):
    if via == "dotdot" and where.startswith("/"):
        where = "./data/../../../../../../../../.." + where
    elif via == "symlink":
        where = "./etc-link" + ("/ssl" if where == "/etc/ssl" else "")
    text = check_refused(valid(where))
    assert "refused:" in text or "would expose" in text


SLURM_FIELDS = ["partition", "time", "mem", "account"]
NASTY = st.sampled_from(["\n", "\r", "\0", ";", "$(", "`", "|", "&", " ", "'", '"', ">"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from([*SLURM_FIELDS, "extra", "var", "location", "env-file"]), bad=NASTY,
       text=st.text(alphabet="abc0123456789", min_size=1, max_size=6))
def test_control_and_shell_characters_are_refused(field, bad, text):
    value = text + bad + "echo hi"
    if field in SLURM_FIELDS:
        doc = valid(slurm={field: value})
    elif field == "extra":
        doc = valid(slurm={"extra": [f"--comment={value}"]})
    elif field == "var":
        doc = valid(env={"file": "env.txt", "vars": {f"A{bad}B": "x"}})
    elif field == "location":
        if bad not in "\n\r\0":
            return  # any other character is fine in a path
        doc = valid(f"./data/{value}")
    else:
        if bad not in "\n\r\0":
            return
        doc = valid(env={"file": f"env.txt{bad}"})
    check_refused(doc)


def test_cli_slurm_options_are_checked(tmp_path):
    check_refused(valid(), ("--executor", "slurm", "--partition", "p\necho hi"))
    check_refused(valid(), ("--executor", "slurm", "--sbatch-arg", "--comment=x; rm -rf /"))
    check_refused(valid(), ("--executor", "slurm", "--sbatch-arg", "--wrap=id"))


def test_how_many_documents_were_tried():
    assert TRIED["documents"] >= 300  # reported by `pytest -s`: the property tests above ran this many
    print(f"\nhostile documents tried: {TRIED['documents']}")


def test_data_outside_the_project_stays_allowed(tmp_path):
    assert mount_problem(Path("/scratch/me/data")) is None
    assert mount_problem(Path("/p/project/x")) is None
    assert mount_problem(Path.home() / "data") is None
    assert mount_problem(Path("/etc/x"), allowed=["/etc"]) is None  # --allow-mount


def test_secrets_are_masked():
    assert mask_env({"HF_TOKEN": "abc", "DB_PASSWORD": "x", "MY_SECRET": "y", "API_KEY": "z", "MODE": "m"}) == {
        "HF_TOKEN": "********", "DB_PASSWORD": "********", "MY_SECRET": "********", "API_KEY": "********", "MODE": "m"}
