"""``python -m archdisc`` (and ``torchrun ... -m archdisc discover ...``): the CLI."""
import sys

from .cli import main

sys.exit(main())
