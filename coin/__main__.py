import sys

from coin.cli import main

sys.exit(main())
