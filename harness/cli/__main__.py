"""``python -m harness.cli``: the ``dynts-bench`` command line."""

from harness.cli import main

main()
