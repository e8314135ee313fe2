"""A local emulator of Vercel's Sandbox API, backed by Docker containers, for the shared provider suite."""
