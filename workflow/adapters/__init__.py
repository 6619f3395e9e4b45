"""Implementations of the service layer's ports: SQLAlchemy, channels, clocks."""
