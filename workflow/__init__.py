"""avrr-workflow: the case lifecycle engine of an AVRR programme."""
