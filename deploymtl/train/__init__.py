"""Search and pruning-aware training: a generic trainer plus one schedule module per family."""
