"""Guards, breakers, failure classification and the shared health store."""
