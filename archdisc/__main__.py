"""``python -m archdisc`` (and ``torchrun ... -m archdisc discover ...``): the CLI."""
import sys

from archdisc.cli import main

sys.exit(main())
