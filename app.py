"""The lvseg web demo as a Hugging Face Space (Gradio SDK): the Space runs this file as it is.

A Space's requirements.txt installs lvseg with its app extra (see docs/app.md). Settings come from the environment
(Space variables): LVSEG_APP_MODELS (comma-separated registry names, hf-hub: ids or folders; default: every
registry entry whose weights are on the machine), LVSEG_APP_MAX_FRAMES, LVSEG_APP_MAX_SIDE,
LVSEG_APP_MAX_EXPRESSIONS, LVSEG_APP_MAX_FILE_MB. Locally, `python app.py` serves it on 127.0.0.1:7860 like
`lvseg app`.
"""

import logging
import os
import sys

from lvseg.app import Limits, launch
from lvseg.cli import _run


def main() -> int:
    names = [n.strip() for n in os.environ.get("LVSEG_APP_MODELS", "").split(",") if n.strip()] or None
    defaults = Limits()
    limits = Limits(
        max_frames=int(os.environ.get("LVSEG_APP_MAX_FRAMES", defaults.max_frames)),
        max_side=int(os.environ.get("LVSEG_APP_MAX_SIDE", defaults.max_side)),
        max_expressions=int(os.environ.get("LVSEG_APP_MAX_EXPRESSIONS", defaults.max_expressions)),
        max_file_mb=int(os.environ.get("LVSEG_APP_MAX_FILE_MB", defaults.max_file_mb)),
    )
    # a Space sets GRADIO_SERVER_NAME=0.0.0.0 (and the port); on a workstation the demo stays on this machine
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    launch(names, host=host, port=port, limits=limits)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(_run(main))
