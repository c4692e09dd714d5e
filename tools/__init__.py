"""Scripts that train the shipped models: the world base and the identity oracle (`python -m tools.NAME`)."""
