import sys

from logitkd.cli import main

sys.exit(main())
