import sys

from simudy.cli import main

sys.exit(main())
