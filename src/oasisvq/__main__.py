import sys

from oasisvq.cli import main

sys.exit(main())
