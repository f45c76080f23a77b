import sys

from genrec_sftdata._cli import main

sys.exit(main())
