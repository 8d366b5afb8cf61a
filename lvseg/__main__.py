"""``python -m lvseg`` (also what ``torchrun -m lvseg train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
