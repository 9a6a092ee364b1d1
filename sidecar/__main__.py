"""`python -m sidecar`: run the ec2-eds sidecar agent."""

import sys

from sidecar.agent import main

sys.exit(main())
