"""Input readers, output layout, shard writing and validation."""
