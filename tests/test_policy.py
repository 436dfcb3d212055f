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
    text = err.getvalue()
    assert exit_info.value.code == 2, text
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and all(re.match(r"^(.+:\d+: \S.*: .+|error: .+)$", ln) for ln in lines), text
    assert not PYTHONISH.search(text), text
    return text


@pytest.mark.parametrize("via", ["direct", "dotdot", "symlink"])
@pytest.mark.parametrize("where", REFUSED)
def test_refused_locations_by_any_path(where, via):
    """Every refused place by every route (all 63 pairs, the same set whatever the order or the seed)."""
    if via == "dotdot" and where.startswith("/"):
        where = "./data/../../../../../../../../.." + where
    elif via == "symlink":
        where = "./etc-link" + ("/ssl" if where == "/etc/ssl" else "")
    text = check_refused(valid(where))
    assert "refused:" in text or "would expose" in text


SLURM_FIELDS = ["partition", "time", "mem", "account"]
NASTY = ["\n", "\r", "\0", ";", "$(", "`", "|", "&", " ", "'", '"', ">"]
LINE_BREAKERS = ["\n", "\r", "\0"]  # the only characters a path may not hold
CASES = [(field, bad) for field in [*SLURM_FIELDS, "extra", "var"] for bad in NASTY] + [
    (field, bad) for field in ["location", "env-file"] for bad in LINE_BREAKERS]


def hostile(field: str, value: str, bad: str) -> dict:
    if field in SLURM_FIELDS:
        return valid(slurm={field: value})
    if field == "extra":
        return valid(slurm={"extra": [f"--comment={value}"]})
    if field == "var":
        return valid(env={"file": "env.txt", "vars": {f"A{bad}B": "x"}})
    if field == "location":
        return valid(f"./data/{value}")
    return valid(env={"file": f"env.txt{bad}"})


@pytest.mark.parametrize("field,bad", CASES)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="abc0123456789", min_size=1, max_size=6))
def test_control_and_shell_characters_are_refused(field, bad, text):
    """Every field with every character it must refuse (all pairs, whatever the seed); Hypothesis varies the rest."""
    check_refused(hostile(field, text + bad + "echo hi", bad))


@pytest.mark.parametrize("bad", [c for c in NASTY if c not in LINE_BREAKERS])
def test_shell_characters_are_fine_in_a_path(tmp_path, bad, capsys):
    """A path is never run by a shell: a dataset location with `;` or `$(` is a name like any other."""
    tmp_path.chmod(0o755)  # as root, steps run as nobody: validate checks that they can read the project
    (tmp_path / "env.txt").write_text("")
    (tmp_path / "wf.yml").write_text(yaml.safe_dump(valid(f"./data/a{bad}b")))
    main(["validate", str(tmp_path / "wf.yml"), "--root", str(tmp_path)])  # a refusal raises SystemExit(2)
    assert capsys.readouterr().err == ""


def test_cli_slurm_options_are_checked(tmp_path):
    check_refused(valid(), ("--executor", "slurm", "--partition", "p\necho hi"))
    check_refused(valid(), ("--executor", "slurm", "--sbatch-arg", "--comment=x; rm -rf /"))
    check_refused(valid(), ("--executor", "slurm", "--sbatch-arg", "--wrap=id"))


def test_data_outside_the_project_stays_allowed(tmp_path):
    assert mount_problem(Path("/scratch/me/data")) is None
    assert mount_problem(Path("/p/project/x")) is None
    assert mount_problem(Path.home() / "data") is None
    assert mount_problem(Path("/etc/x"), allowed=["/etc"]) is None  # --allow-mount


def test_secrets_are_masked():
    assert mask_env({"HF_TOKEN": "abc", "DB_PASSWORD": "x", "MY_SECRET": "y", "API_KEY": "z", "MODE": "m"}) == {
        "HF_TOKEN": "********", "DB_PASSWORD": "********", "MY_SECRET": "********", "API_KEY": "********", "MODE": "m"}
