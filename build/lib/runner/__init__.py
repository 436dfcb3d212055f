"""itwin-run: a containerised workflow runner for AI/ML digital twins."""

__version__ = "0.1.0"

import os as _os

# Nothing here uses pydantic plugins; scanning for them costs a noticeable part of the CLI's start-up.
_os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
