"""Training jobs and the models they train (the MTGAN generator/discriminator, the baseline detector)."""
