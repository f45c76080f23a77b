import sys

from genrec_otcoreset._cli import main

sys.exit(main())
