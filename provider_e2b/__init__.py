"""The e2b provider: a driver for the shared provider kit."""
