"""The shared core of distinit: the CLI, the shard contract, video decoding, configs and errors."""
