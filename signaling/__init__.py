"""Signaling for two-party calls (rooms, token, offer/answer exchange). Not built yet:
the codec works on files today (``facecodec compress`` / ``decompress``)."""
