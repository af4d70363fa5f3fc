import sys

try:  # Ctrl-C while importing (under torchrun every rank gets it): one line from main, or none here
    from distinterp.jobs.cli import main
except KeyboardInterrupt:
    sys.exit(130)

sys.exit(main())
