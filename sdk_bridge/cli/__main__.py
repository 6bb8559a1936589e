"""`python -m sdk_bridge.cli`: the `sdk-bridge` command."""

import sys

from . import main

sys.exit(main())
