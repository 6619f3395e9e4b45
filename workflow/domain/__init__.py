"""The case aggregate and its lifecycle; imports only the standard library."""
