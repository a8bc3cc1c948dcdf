"""The application on top of the library: the ``facecodec`` command, calls and the demo.

- :mod:`app.call` runs one side of a call: signaling, a WebRTC peer connection, a
  :class:`sender.session.SenderSession` and a :class:`receiver.session.ReceiverSession`.
- :mod:`app.demo` runs two such peers in one process (``facecodec demo``).
- :mod:`app.__main__` is the command line.

Arrows point down only: ``app`` uses ``sender``, ``receiver``, ``signaling``, ``rtc`` and
``codec``; none of them imports ``app``.
"""
