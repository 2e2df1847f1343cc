"""`python -m cai` (also `accelerate launch -m cai ...`)."""

import sys

from cai.cli import main

sys.exit(main())
