"""The daytona provider: a driver for the shared provider kit."""
