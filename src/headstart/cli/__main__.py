import sys

from headstart.cli.parser import main

sys.exit(main())
