import sys

from genrec_trainer._cli import main

sys.exit(main())
