import sys

from genrec_evaluator._cli import main

sys.exit(main())
