import sys

from distinterp.cli import main

sys.exit(main())
