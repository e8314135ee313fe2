"""sandboxctl: the command-line client of the sandbox platform."""
