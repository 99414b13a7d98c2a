import sys

from frugalray.cli import main

sys.exit(main())
