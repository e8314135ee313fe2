"""The vercel provider: a driver for the shared provider kit."""
