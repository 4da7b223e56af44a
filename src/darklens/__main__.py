import sys

from darklens.cli import main

sys.exit(main())
