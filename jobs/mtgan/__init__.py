"""MTGAN: the generator, the multi-task discriminator, their losses, the shard loader and the training job."""
