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
