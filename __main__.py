"""`python -m tao_finetune`: the same command as `tao-finetune`."""

import sys

from tao_finetune.agent.cli import main

sys.exit(main())
