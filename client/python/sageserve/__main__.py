"""`python -m sageserve ...` (sageserve.cli)."""
import sys

from sageserve.cli import main

sys.exit(main())
