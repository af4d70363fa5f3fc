import sys

from distinterp.jobs.cli import main

sys.exit(main())
