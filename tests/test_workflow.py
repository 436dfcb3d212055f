"""Workflow model: parsing, argv contract, and file:line errors (no daemon needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runner import workflow
from runner.errors import ValidationError
from tests.conftest import REPO, itwin

MNIST = REPO / "use-cases" / "mnist"


def write(tmp_path: Path, text: str, name: str = "wf.yml") -> Path:
    (tmp_path / "env.txt").write_text("")
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        workflow.load(write(tmp_path, text), root=tmp_path)
    return exc.value.problems


def test_prototype_mnist_file_loads_with_cwl_section_ignored():
    wf = workflow.load(MNIST / "training-workflow.yml", root=REPO)
    assert [s.name for s in wf.steps] == ["preprocessing", "ml-training"]
    train = wf.step("ml-training")
    assert train.inputs == ("preproc-images",) and train.output == "ml-logs"
    assert train.env.prefix == "./ai/.venv-pytorch" and train.sources == (REPO / "itwinai",)
    assert wf.extra["workflowFileCWL"] == "use-cases/mnist/workflow.cwl"
    assert wf.argv(train) == ["itwinai", "train", "--input", str(REPO / "data/mnist/preproc-images"),
                              "--output", str(REPO / "data/mnist/ml-logs"),
                              "--config", "./use-cases/mnist/mnist-ai.yml"]


def test_argv_lists_booleans_and_metacharacters(tmp_path):
    wf = workflow.load(write(tmp_path, """
datasets: {a: {location: ./a}, b: {location: ./b}, c: {location: ./c}}
steps:
  - s:
      input: [a, b]
      output: c
      command: python "my script.py" -x
      env: {file: env.txt}
      params: {k: "v; rm -rf $(x) `y`", l: [1, "two words"], on: true, off: false, none: null}
"""), root=tmp_path)
    assert wf.argv(wf.steps[0]) == ["python", "my script.py", "-x", "--input", str(tmp_path / "a"),
                                    "--input", str(tmp_path / "b"), "--output", str(tmp_path / "c"),
                                    "--k", "v; rm -rf $(x) `y`", "--l", "1", "--l", "two words", "--on"]


def test_order_follows_datasets_not_file_order(tmp_path):
    wf = workflow.load(write(tmp_path, """
datasets: {a: {location: ./a}, b: {location: ./b}}
steps:
  - second: {input: a, output: b, command: x, env: {file: env.txt}}
  - first: {output: a, command: x, env: {file: env.txt}}
"""), root=tmp_path)
    assert [s.name for s in wf.steps] == ["first", "second"]


def test_every_problem_reported_with_line(tmp_path):
    got = problems(tmp_path, """datasets:
  a: {location: ./a}
steps:
  - one:
      input: nope
      output: a
      command: x
      env: {file: missing.txt}
  - one:
      output: a
      command: 3
      env: {file: env.txt}
      colour: red
""")
    f = str(tmp_path / "wf.yml")
    assert f"{f}:11:7: steps[1].one.command: Input should be a valid string" in got
    assert f"{f}:13:7: steps[1].one.colour: unknown field" in got
    # the model problems come first (pydantic), then the cross-reference checks after a fix:
    got = problems(tmp_path, """datasets:
  a: {location: ./a}
steps:
  - one:
      input: nope
      output: a
      command: x
      env: {file: missing.txt}
  - one:
      output: a
      command: y
      env: {file: env.txt}
""")
    assert any(p.startswith(f"{f}:5:7: steps[0].one.input: unknown dataset 'nope'") for p in got)
    assert any(p.startswith(f"{f}:8:13: steps[0].one.env.file: env file not found") for p in got)
    assert any(p.startswith(f"{f}:9:5: steps[1].one: duplicate step name") for p in got)
    assert any(p.startswith(f"{f}:10:7: steps[1].one.output: dataset 'a' is also written by step 'one'") for p in got)


def test_cycle_is_reported(tmp_path):
    got = problems(tmp_path, """
datasets: {a: {location: ./a}, b: {location: ./b}}
steps:
  - x: {input: b, output: a, command: c, env: {file: env.txt}}
  - y: {input: a, output: b, command: c, env: {file: env.txt}}
""")
    assert len(got) == 1 and "cycle" in got[0] and "x -> y" in got[0] and ":3:1: steps:" in got[0]


def test_bad_yaml_and_wrong_top_level(tmp_path):
    got = problems(tmp_path, "steps:\n  - a: {command: [unclosed\n")
    assert len(got) == 1 and ":3:1: yaml:" in got[0]
    assert problems(tmp_path, "- just a list\n")[0].endswith(":1:1: top: a workflow is a mapping with 'datasets' and 'steps'")
    assert problems(tmp_path, "datasets: {}\n")[0].endswith("steps: required field is missing")


def test_tabs_empty_files_and_misspelt_fields_are_named(tmp_path):
    """A tab is named as a tab with its column (libyaml said only 'found character that cannot start any token');
    an empty file is said to be empty (it was 'top: ...'); a misspelt field gets a 'did you mean'."""
    f = tmp_path / "wf.yml"
    assert problems(tmp_path, "datasets:\n\to: {location: ./o}\n") == [f"{f}:2:1: yaml: a tab at column 1: indent with spaces"]
    assert problems(tmp_path, "") == [f"{f}:1:1: the file is empty: a workflow is a mapping with 'datasets' and 'steps'"]
    got = problems(tmp_path, "datasets: {o: {location: ./o, locaton: x}}\nresources: {cpu: 1}\nsteps:\n"
                             "  - s:\n      ouput: o\n      command: c\n      env: {file: env.txt, fiel: x}\n"
                             "      slurm: {partiton: p}\n")
    assert got == [f"{f}:1:31: datasets.o.locaton: unknown field (did you mean 'location'?)",
                   f"{f}:2:13: resources.cpu: unknown field (did you mean 'cpus'?)",
                   f"{f}:5:7: steps[0].s.ouput: unknown field (did you mean 'output'?)",
                   f"{f}:7:28: steps[0].s.env.fiel: unknown field (did you mean 'file'?)",
                   f"{f}:8:15: steps[0].s.slurm.partiton: unknown field (did you mean 'partition'?)"]


@pytest.mark.parametrize("location", ["/", ".", "..", "./"])
def test_dataset_locations_that_expose_too_much_are_refused(tmp_path, location):
    got = problems(tmp_path, f"""
datasets: {{a: {{location: "{location}"}}}}
steps:
  - s: {{output: a, command: c, env: {{file: env.txt}}}}
""")
    assert "would expose" in got[0]


def test_overlapping_datasets_are_refused(tmp_path):
    got = problems(tmp_path, """
datasets: {a: {location: ./d}, b: {location: ./d/sub}}
steps:
  - s: {output: a, command: c, env: {file: env.txt}}
""")
    assert "overlaps dataset 'a'" in got[0]


def test_cli_exit_code_2_and_no_traceback(tmp_path):
    write(tmp_path, "datasets: {a: {location: ./a}}\nsteps:\n  - s: {output: zz, command: c, env: {file: env.txt}}\n")
    res = itwin("--engine", "docker", "wf.yml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: wf.yml:3:9: steps[0].s.output: unknown dataset 'zz'"
    assert "Traceback" not in res.stderr + res.stdout


def test_cli_missing_file_is_one_line(tmp_path):
    res = itwin("nothing.yml", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "error: nothing.yml: no such workflow file"  # a usage error


def test_schema_command_prints_json_schema(tmp_path):
    res = itwin("schema", cwd=tmp_path)
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert "steps" in schema["properties"] and "Step" in schema["$defs"]


def test_newcomer_mistakes_get_one_sentence_each(tmp_path):
    (tmp_path / "afile").write_text("")
    got = problems(tmp_path, "datasets:\n  points: {location: ./data/points}\n  f: {location: ./afile}\nsteps:\n"
                   "  - fit: {input: pointz, output: f, command: python x.py, env: {file: env.txt}}\n")
    assert got == [f"{tmp_path}/wf.yml:3:7: datasets.f.location: {tmp_path}/afile is a file: a dataset is a directory",
                   f"{tmp_path}/wf.yml:5:11: steps[0].fit.input: unknown dataset 'pointz' (did you mean 'points'?)"]
    got = problems(tmp_path, "steps:\n  - fit: {command: python x.py, env: {file: env.txt}, params: {a: {b: 1}}}\n")
    assert got == [f"{tmp_path}/wf.yml:2:64: steps[0].fit.params.a: a param is a scalar (text, number, true/false) "
                   "or a list of scalars"]


def test_a_missing_relative_path_says_where_it_looked_and_how_to_fix_it(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "env.txt").write_text("")
    wf = project / "wf.yml"
    wf.write_text("steps:\n  - s: {command: python x.py, env: {file: ./env.txt}}\n")
    with pytest.raises(ValidationError) as exc:
        workflow.load(wf, root=tmp_path)
    assert exc.value.problems == [
        f"{wf}:2:37: steps[0].s.env.file: env file not found: ./env.txt (looked in {tmp_path}/env.txt); relative paths "
        f"resolve against the current directory {tmp_path}, and the workflow file is in {project}: cd there, or pass "
        f"--root {project}"]


def test_top_level_help_lists_the_commands_and_the_default(tmp_path):
    res = itwin("--help", cwd=tmp_path)
    assert res.returncode == 0
    for command in ("run", "build", "validate", "history", "show", "status", "init", "doctor"):
        assert f" {command} " in res.stdout
    assert "is `itwin-run run [OPTIONS] WORKFLOW.yml`" in " ".join(res.stdout.split())
    assert ("Exit codes: 0 success; 1 a step failed; 2 the workflow or the command line is wrong; 3 the machine cannot "
            "run it; 130, 143, 129, 131 interrupted.") in " ".join(res.stdout.split())


def test_the_readme_first_workflow_is_what_init_writes(tmp_path):
    import yaml

    readme = (REPO / "README.md").read_text()
    block = readme.split("## Your first workflow", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert itwin("init", "p", cwd=tmp_path).returncode == 0
    assert yaml.safe_load(block) == yaml.safe_load((tmp_path / "p" / "workflow.yml").read_text())


def test_env_source_takes_package_directories_and_wheels(tmp_path):
    """env.source: one path (the prototype's form) or a list of package directories and wheel files; each is
    installed on top of the env file's requirements and is part of the image hash."""
    from runner.images import BuildOptions, spec_for

    pkg = tmp_path / "libs" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text("[project]\nname = 'mypkg'\nversion = '1'\n")
    wheel = tmp_path / "wheels" / "other-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"first")
    wf = workflow.load(write(tmp_path, "steps:\n  - s:\n      command: python x.py\n      env:\n        file: env.txt\n"
                                      "        source: [./libs/mypkg, ./wheels/other-1.0-py3-none-any.whl]\n"),
                       root=tmp_path)
    step = wf.steps[0]
    assert step.sources == (pkg, wheel)
    spec = spec_for(step, wf)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    opts = BuildOptions()
    spec.sources_context(ctx, "itwin-run/s:deps")
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "FROM itwin-run/s:deps AS sources" in dockerfile
    assert "build-sources.py /tmp/itwin-wheels ./source/0 ./source/1/other-1.0-py3-none-any.whl" in dockerfile
    assert (ctx / "build-sources.py").is_file()
    assert (ctx / "source" / "0" / "pyproject.toml").is_file()
    assert (ctx / "source" / "1" / wheel.name).read_bytes() == b"first"
    tag = spec.tag("base", opts)
    wheel.write_bytes(b"second")
    assert spec_for(step, wf).tag("base", opts) != tag, "a new wheel is a new image"

    got = problems(tmp_path, "steps:\n  - s:\n      command: python x.py\n      env:\n        file: env.txt\n"
                             "        source:\n          - ./libs\n          - ./nothing.whl\n")
    assert got == [f"{tmp_path}/wf.yml:7:13: steps[0].s.env.source[0]: ./libs: not a Python package directory "
                   f"(no pyproject.toml or setup.py in {tmp_path}/libs)",
                   f"{tmp_path}/wf.yml:8:13: steps[0].s.env.source[1]: source not found: ./nothing.whl (looked in "
                   f"{tmp_path}/nothing.whl; a package directory or a .whl file)"]


def test_sources_build_with_the_images_tools_when_it_has_them(tmp_path, monkeypatch):
    """images/build-sources.py (run inside the image): a source whose build requirements are installed is built
    with them (no isolated build, nothing fetched); one needing anything else gets pip's isolated build."""
    import importlib.util
    from importlib import metadata
    from types import SimpleNamespace

    from runner.images import TEMPLATES

    loader = importlib.util.spec_from_file_location("build_sources", TEMPLATES / "build-sources.py")
    assert loader and loader.loader
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)

    def ready(pyproject: str | None) -> bool:
        src = tmp_path / str(len(list(tmp_path.iterdir())))
        src.mkdir()
        if pyproject is None:
            (src / "setup.py").write_text("from setuptools import setup\nsetup()\n")
        else:
            (src / "pyproject.toml").write_text(pyproject)
        return all(mod.installed(r) for r in mod.build_requirements(src))

    setuptools = '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
    assert ready(setuptools)  # setuptools 70.1+ here: no `wheel` needed
    assert ready(None) and ready("[project]\nname = 'x'\n")  # PEP 517's default: setuptools
    assert not ready(setuptools.replace(">=61", ">=999"))
    assert not ready('[build-system]\nrequires = ["itwin-no-such-backend"]\nbuild-backend = "nsb.build"\n')
    assert ready('[build-system]\nrequires = ["itwin-no-such-backend; python_version < \'3\'", "pip"]\n'
                 'build-backend = "pip.x"\n')  # a marker that does not apply

    def installed_with(requirement: str, **versions: str) -> bool:  # in an image holding these distributions
        def version(name: str) -> str:
            if name not in versions:
                raise metadata.PackageNotFoundError(name)
            return versions[name]

        monkeypatch.setattr(mod, "metadata", SimpleNamespace(version=version,
                                                             PackageNotFoundError=metadata.PackageNotFoundError))
        return mod.installed(requirement)

    assert installed_with("wheel", setuptools="70.1.0")  # setuptools 70.1+ builds wheels itself
    assert not installed_with("wheel", setuptools="66.1.1")  # Debian 12's needs `wheel`
    assert installed_with("wheel", setuptools="66.1.1", wheel="0.38.4")
    assert not installed_with("setuptools>=61")


def test_image_hash_is_the_packages_not_the_words_around_them(tmp_path):
    """A step image's hash covers the packages an env file names, not its comments, its name or its kind."""
    from runner.images import BuildOptions, spec_for

    def content(env: str, text: str) -> str:
        (tmp_path / env).write_text(text)
        wf = workflow.load(write(tmp_path, f"steps:\n  - s: {{command: 'python x.py', env: {{file: {env}}}}}\n"),
                           root=tmp_path)
        spec = spec_for(wf.steps[0], wf)
        return spec.tag("base", BuildOptions()).rpartition(":")[2]

    plain = content("a.txt", "numpy>=1.24\npyyaml\n")
    assert content("b.txt", "# what x.py needs\nnumpy>=1.24  # arrays\n\npyyaml\n") == plain
    assert content("c.yml", "name: c\ndependencies:\n  - python=3.11\n  - pip\n  - pip: [numpy>=1.24, pyyaml]\n") == plain
    assert content("d.txt", "numpy>=1.25\npyyaml\n") != plain
    assert content("e.txt", "git+https://example.org/x.git#egg=x\n") != content("f.txt", "git+https://example.org/x.git\n")


def test_requirements_naming_local_paths_go_into_the_context_and_the_hash(tmp_path):
    """Requirements lines that name local paths (`./libs/mypkg`, a wheel, `-e ./pkg`, in a requirements file or an
    environment.yml's pip list) are installed from the build context and hashed; a missing one is file:line."""
    from runner.errors import ValidationError
    from runner.images import BuildOptions, spec_for

    pkg = tmp_path / "libs" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text("[project]\nname = 'mypkg'\nversion = '1'\n")
    wheel = tmp_path / "other-1.0-py3-none-any.whl"
    wheel.write_bytes(b"first")
    (tmp_path / "req.txt").write_text("numpy>=1.24\n./libs/mypkg\n-e ./libs/mypkg\nother-1.0-py3-none-any.whl\n")
    (tmp_path / "env.yml").write_text("dependencies:\n  - python=3.11\n  - pip:\n    - ./libs/mypkg\n")
    for env, reqs in (("req.txt", "numpy>=1.24\n./local/0\n./local/1\n./local/2/other-1.0-py3-none-any.whl\n"),
                      ("env.yml", "./local/0\n")):
        wf = workflow.load(write(tmp_path, f"steps:\n  - s:\n      command: python x.py\n      env: {{file: {env}}}\n"),
                           root=tmp_path)
        spec = spec_for(wf.steps[0], wf)
        assert spec.requirements == reqs and spec.local[0] == pkg
        ctx = tmp_path / f"ctx-{env}"
        ctx.mkdir()
        spec.context(ctx, "itwin-run/base:x", BuildOptions())
        assert (ctx / "local" / "0" / "pyproject.toml").is_file()
        assert "COPY local ./local" in (ctx / "Dockerfile").read_text()
        tag = spec.tag("base", BuildOptions())
        (pkg / "mod.py").write_text("x = 1\n")
        assert spec_for(wf.steps[0], wf).tag("base", BuildOptions()) != tag, "an edit of the local package rebuilds"
        (pkg / "mod.py").unlink()
    (tmp_path / "req.txt").write_text("numpy\n./libs/nothing\n")
    wf = workflow.load(write(tmp_path, "steps:\n  - s:\n      command: python x.py\n      env: {file: req.txt}\n"),
                       root=tmp_path)
    with pytest.raises(ValidationError, match=f"{tmp_path}/req.txt:2:1: ./libs/nothing: no such file or directory"):
        spec_for(wf.steps[0], wf)


def test_ml_template_loads_and_shares_the_itwinai_image_dependencies(tmp_path):
    """`init --template ml` writes a workflow that validates (its itwinai wheel included), and its training env file
    asks for exactly what itwinai's own does: the two images share the dependency layer, and the pins do not drift."""
    from runner.images import conda_to_pip

    assert itwin("init", "p", "--template", "ml", cwd=tmp_path).returncode == 0
    project = tmp_path / "p"
    wf = workflow.load(project / "workflow.yml", root=project)
    train = next(s for s in wf.steps if s.name == "train")
    assert [p.name for p in train.sources] == [next((project / "wheels").iterdir()).name]
    ours, theirs = project / "envs" / "train.yml", REPO / "itwinai" / "env.yml"
    assert conda_to_pip(ours, ours.read_text()) == conda_to_pip(theirs, theirs.read_text())
    assert {".gitignore", "README.md", "workflow.yml"} <= {p.name for p in project.iterdir()}
    again = itwin("init", "p", "--template", "ml", cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr
    assert itwin("init", "q", "--template", "ml", cwd=tmp_path).returncode == 0  # the same wheel: the same image
    wheels = [next((tmp_path / d / "wheels").iterdir()).read_bytes() for d in ("p", "q")]
    assert wheels[0] == wheels[1]


def test_resources_are_checked_with_file_and_line(tmp_path):
    got = problems(tmp_path, "resources: {memory: lots}\nsteps:\n  - s:\n      command: python x.py\n"
                             "      env: {file: env.txt}\n      gpus: all\n"
                             "      resources: {cpus: 0, time: soon, gpus: 1, disk: 2G}\n      retries: -1\n")
    assert len(got) == 5, got  # (gpus twice is checked once the file has the right shape)
    assert got[0] == f"{tmp_path}/wf.yml:1:13: resources.memory: 'lots' is not a size such as 512M, 2G or 1.5G"
    assert any(p.startswith(f"{tmp_path}/wf.yml:7:49: steps[0].s.resources.disk: ") for p in got), got
    assert any(p.startswith(f"{tmp_path}/wf.yml:8:7: steps[0].s.retries: ") for p in got), got
    assert workflow.memory_bytes("1.5G") == 1536 * 2**20 and workflow.memory_bytes("2gb") == 2 * 2**30
    assert workflow.duration_seconds("01:30:00") == 5400 and workflow.duration_seconds("2s") == 2
    got = problems(tmp_path, "steps:\n  - s:\n      command: python x.py\n      env: {file: env.txt}\n"
                             "      gpus: all\n      resources: {gpus: 1}\n")
    assert got == [f"{tmp_path}/wf.yml:6:19: steps[0].s.resources.gpus: gpus given twice (gpus and resources.gpus): "
                   "keep one"]


def test_apptainer_gpu_steps_get_the_allocation_not_every_gpu():
    """--cleanenv hid CUDA_VISIBLE_DEVICES, so a step under SLURM saw every GPU of the node: the step now gets the
    caller's allocation, narrowed to what it asks."""
    from runner.engines.base import allocated_gpus

    slurm = {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_GPUS": "2,3", "PATH": "/bin"}
    assert allocated_gpus("all", slurm) == {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_GPUS": "2,3"}
    assert allocated_gpus(1, slurm)["CUDA_VISIBLE_DEVICES"] == "2"
    assert allocated_gpus([1], slurm)["CUDA_VISIBLE_DEVICES"] == "3"
    assert allocated_gpus([0, 5], slurm)["CUDA_VISIBLE_DEVICES"] == "2"  # no device 5 in this allocation
    assert allocated_gpus(1, {"GPU_DEVICE_ORDINAL": "1"}) == {"GPU_DEVICE_ORDINAL": "1"}
    assert allocated_gpus("all", {"PATH": "/bin"}) == {}


def test_container_steps_get_the_host_gpus_of_the_allocation():
    """Docker and Podman name host GPUs: SLURM's host indices (CUDA_VISIBLE_DEVICES may be renumbered inside the
    job's cgroup), narrowed to what the step asks; no allocation named: None (the runtime picks)."""
    from runner.engines.base import host_gpus

    slurm = {"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert host_gpus(1, slurm) == ["2"] and host_gpus("all", slurm) == ["2", "3"] and host_gpus([1], slurm) == ["3"]
    assert host_gpus(1, {"CUDA_VISIBLE_DEVICES": "1"}) == ["1"]
    assert host_gpus(1, {}) is None and host_gpus(1, {"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.parametrize("how", [["validate"], ["run", "--dry-run"], ["run", "-n"]])
def test_validate_and_dry_run_refuse_what_the_run_refuses(tmp_path, capsys, how):
    """An input dataset that does not exist and no step writes: the run refuses it (exit 2), and so do `validate`
    and the dry run, with the same line (they passed it before)."""
    from runner.cli import main

    (tmp_path / "env.txt").write_text("")
    (tmp_path / "w.yml").write_text("datasets:\n  raw: {location: ./data/raw}\n  out: {location: ./data/out}\n"
                                    "steps:\n  - stats: {input: raw, output: out, command: python s.py, "
                                    "env: {file: env.txt}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main([*how, str(tmp_path / "w.yml"), "--root", str(tmp_path)])
    assert exit_info.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert lines == [f"error: {tmp_path}/w.yml:5:5: stats.input: dataset 'raw' ({tmp_path}/data/raw) does not exist and "
                     "no selected step writes it"]


def test_ml_template_takes_itwinai_as_a_relative_directory(tmp_path):
    """`init --template ml --itwinai ./itwinai-src`, as the README says: a directory named relative to here (pip once
    read `itwinai-src` as a package name), built with what this environment has."""
    shutil.copytree(REPO / "itwinai", tmp_path / "itwinai-src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
    res = itwin("init", "ml", "--template", "ml", "--itwinai", "./itwinai-src", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in (tmp_path / "ml" / "wheels").iterdir()][0].startswith("itwinai-")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pyproject.toml").write_text("[project]\nname = 'itwinai'\nversion = 'not a version'\n")
    res = itwin("init", "ml2", "--template", "ml", "--itwinai", "./broken", cwd=tmp_path)
    assert res.returncode != 0 and "could not build the itwinai wheel from broken" in res.stderr, res.stderr
    assert "See above for details" not in res.stderr and "version" in res.stderr.lower(), res.stderr


def test_init_here_says_how_to_run_it_from_here(tmp_path):
    """`init .` said ``cd . && itwin-run workflow.yml``."""
    (tmp_path / "here").mkdir()
    res = itwin("init", ".", cwd=tmp_path / "here")
    assert res.returncode == 0 and "run it with `itwin-run workflow.yml`" in res.stderr, res.stderr
    res = itwin("init", "there", cwd=tmp_path)
    assert res.returncode == 0 and "run it with `cd there && itwin-run workflow.yml`" in res.stderr, res.stderr


def test_concurrent_gpu_steps_on_a_workstation_get_distinct_gpus():
    """With no allocation naming the GPUs, two `gpus: 1` steps under --jobs 2 on a two-GPU machine both got GPU 0:
    a count now takes the least busy of the node's GPUs, and gives them back when the step ends."""
    from runner.engines.base import GpuShare
    from runner.engines.docker.client import gpu_requests

    share = GpuShare(["0", "1"])
    first, second = share.take(1), share.take(1)
    assert (first, second) == (["0"], ["1"])
    share.give(first)
    assert share.take(1) == ["0"] and share.take(2) == ["0", "1"]  # more than are free: shared, least busy first
    assert GpuShare([]).take(1) is None  # the node's GPUs unknown: the runtime chooses, as before
    assert gpu_requests(1, {}, ids=["1"])[0]["DeviceIDs"] == ["1"]
    assert gpu_requests(1, {})[0]["Count"] == 1


@pytest.mark.parametrize("text, where, said", [
    ("datasets: {a: {location: ./a}}\nsteps: []\ndatasets: {}\n", "3:1", "datasets: duplicate key"),
    ("datasets: {a: {location: ./a}}\nsteps:\n  - s: {command: x, command: y}\n", "3:21", "steps[0].s.command: "
     "duplicate key"),
    ("datasets:\n  ? [a]\n  : {location: ./a}\nsteps: []\n", "2:5", "datasets: keys must be plain names"),
    ("datasets: {a: {location: !!int abc}}\nsteps: []\n", "1:26", "datasets.a.location: tag:yaml.org,2002:int 'abc': "
     "invalid literal"),
])
def test_a_duplicate_or_odd_key_is_one_line_with_its_place(tmp_path, text, where, said):
    (tmp_path / "wf.yml").write_text(text)
    with pytest.raises(ValidationError) as err:
        workflow.load(tmp_path / "wf.yml", root=tmp_path)
    (line,) = err.value.problems
    assert line.startswith(f"{tmp_path / 'wf.yml'}:{where}: {said}"), line


def test_the_wheelhouse_is_not_in_the_build_context(tmp_path):
    """The builder serves the wheelhouse to the build (ITWIN_WHEELS): the context carries the requirements only, and
    the dependencies are installed in the image's one stage, not copied from a stage that held the wheels."""
    from runner.images import WHEELS_ARG, BuildOptions, spec_for

    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    (wheelhouse / "big-1.0-py3-none-any.whl").write_bytes(b"x" * 1_000_000)
    (tmp_path / "req.txt").write_text("big\n")
    wf = workflow.load(write(tmp_path, "steps:\n  - s:\n      command: python x.py\n      env: {file: req.txt}\n"),
                       root=tmp_path)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    spec_for(wf.steps[0], wf).context(ctx, "itwin-run/base:x", BuildOptions(wheelhouse=wheelhouse))
    assert sorted(p.name for p in ctx.rglob("*")) == ["Dockerfile", "requirements.txt"]
    dockerfile = (ctx / "Dockerfile").read_text()
    assert f"ARG {WHEELS_ARG}" in dockerfile and f"--find-links ${WHEELS_ARG}" in dockerfile
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") == 1 and "COPY --from" not in dockerfile
