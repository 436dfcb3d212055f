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
    for line, want in [("Step 4/12 : RUN pip install --prefer-binary --find-links wheels -r requirements.txt",
                        "dependencies layer"),
                       ("Collecting torch==2.13.0", "dependencies layer, pip resolving"),
                       ("  Downloading mlflow-3.17.2-py3-none-any.whl (24.1 MB)", "dependencies layer, pip downloading"),
                       ("Installing collected packages: torch, mlflow", "dependencies layer, pip installing"),
                       ("Step 4/7 : RUN python build-sources.py /tmp/itwin-wheels ./source/0", "sources layer"),
                       ("Building wheel for itwinai (pyproject.toml): started", "sources layer, pip building wheels")]:
        phase.see(line)
        assert str(phase) == want, line
