"""Drawing: the only code that prints (consoles and messages, progress, cells, and the views)."""
