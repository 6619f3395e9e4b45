"""Use cases of the engine: the transition service, the unit of work and the ports it needs."""
