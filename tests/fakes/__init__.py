"""Local HTTP servers that play the providers, for the real SDK clients to talk to."""
