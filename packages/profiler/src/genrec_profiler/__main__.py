import sys

from genrec_profiler._cli import main

sys.exit(main())
