"""The learning plane: the frozen base encoder (I3) and what is learned on top of it, one
tenant at a time."""
