"""A local emulator of Daytona's API (REST + toolbox), backed by Docker containers."""
