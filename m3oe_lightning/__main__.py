"""``python -m m3oe_lightning`` is the training entry point."""

from m3oe_lightning.train import main

main()
