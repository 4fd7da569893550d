import sys

from rewa.cli import main

sys.exit(main())
