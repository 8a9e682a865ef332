"""`python -m odenet.reproduce`: the same as `odenet reproduce`."""

from odenet.reproduce.command import main

raise SystemExit(main())
