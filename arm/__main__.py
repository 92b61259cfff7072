import sys

from arm.cli import main

sys.exit(main())
