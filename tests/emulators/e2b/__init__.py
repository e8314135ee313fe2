"""A local emulator of E2B's control-plane API and envd, for the E2B provider's tests."""
