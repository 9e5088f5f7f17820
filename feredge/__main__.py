"""`python -m feredge ...` is the `feredge` command."""
import sys

from feredge.edge.cli import main

sys.exit(main())
