import sys

from genrec_pipeline._cli import main

sys.exit(main())
