"""Terminal output (fast tier)."""

from __future__ import annotations

from runner import ui


def test_a_spinner_inside_another_says_its_text_and_gives_it_back():
    """Making a source overlay pulls wheels, each with a spinner: rich before 14 refused the second live display
    (LiveError), which failed the Apptainer run (test_registry found it once roc-validator pinned rich < 14)."""
    with ui.status("making the source overlay") as outer:
        with ui.status("pulling the wheels") as inner:
            assert inner is outer and str(outer.status) == "pulling the wheels"
        assert str(outer.status) == "making the source overlay"
    with ui.status("next") as again:  # the first one is gone: a new one may start
        assert again is not outer


def test_build_progress_names_the_layer_and_pips_phase():
    from runner.engines.docker import BuildPhase

    phase = BuildPhase()
    for line, want in [("Step 4/12 : RUN pip install --prefer-binary --find-links $ITWIN_WHEELS -r requirements.txt",
                        "dependencies layer"),
                       ("Collecting torch==2.13.0", "dependencies layer, pip resolving"),
                       ("  Downloading mlflow-3.17.2-py3-none-any.whl (24.1 MB)", "dependencies layer, pip downloading"),
                       ("Installing collected packages: torch, mlflow", "dependencies layer, pip installing"),
                       ("Step 4/7 : RUN python build-sources.py /tmp/itwin-wheels ./source/0", "sources layer"),
                       ("Building wheel for itwinai (pyproject.toml): started", "sources layer, pip building wheels")]:
        phase.see(line)
        assert str(phase) == want, line


def test_build_progress_moves_on_its_own_and_never_shows_a_layer_id(capsys):
    """#32: on a terminal the build's seconds froze while pip said nothing; without one, the first line came after
    33 s (only when the build printed something), and the latest line was often Docker's ` ---> fdb1a813939d`."""
    import re
    import time

    from runner.engines.docker.buildlog import BuildProgress

    class Status:
        def __init__(self) -> None:
            self.said: list[str] = []

        def update(self, text: str) -> None:
            self.said.append(text)

    with BuildProgress("itwin-run/x:1", "train", None, False, lambda: 100, every=0.3) as progress:
        time.sleep(0.9)  # the build said nothing yet: lines all the same
        for line in ("Step 4/12 : RUN pip install -r requirements.txt", "Collecting torch==2.13.0", " ---> fdb1a813939d",
                     "Removing intermediate container 0123456789ab", " ---> Running in 0123456789ab"):
            progress.see(line)
        time.sleep(0.9)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("building itwin-run/x:1 for step train (its progress every") and len(err) >= 3, err
    assert re.fullmatch(r"building train \(base layer, \d+s\)", err[1]), err
    assert re.fullmatch(r"building train \(dependencies layer, pip resolving, \d+s\): Collecting torch==2.13.0",
                        err[-1]), err
    shown = Status()
    with BuildProgress("itwin-run/x:1", "train", shown, True, lambda: 100):
        time.sleep(3.5)  # nothing from the build: the seconds still count
    seconds = [int(m.group(1)) for s in shown.said if (m := re.fullmatch(r"building train \(base layer, (\d+)s\)", s))]
    assert len(seconds) >= 2 and seconds == sorted(set(seconds)), shown.said
