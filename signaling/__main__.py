"""``facecodec serve-signaling`` / ``python -m signaling``: run the signaling server.

The token comes from ``--token`` or, better (command lines are visible to other users),
the environment variable FACECODEC_SIGNALING_TOKEN. Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from signaling.server import TOKEN_ENV, SignalingServer

log = logging.getLogger("facecodec.signaling")


def build_parser(prog: str = "facecodec serve-signaling") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0: any free port)")
    parser.add_argument("--token", default=None,
                        help=f"shared-secret token peers must present (default: ${TOKEN_ENV})")
    parser.add_argument("--max-message-bytes", type=int, default=65536,
                        help="largest message a peer may send")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="messages/s allowed per connection (token bucket)")
    parser.add_argument("--burst", type=int, default=100, help="token bucket size")
    parser.add_argument("--max-rooms", type=int, default=1000, help="rooms open at once")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="connections at once (default: the file-descriptor limit less 64)")
    parser.add_argument("--max-connections-per-client", type=int, default=32,
                        help="connections at once from one client address")
    parser.add_argument("--max-unjoined-per-client", type=int, default=8,
                        help="connections from one address that have not joined a room yet")
    parser.add_argument("--max-rooms-per-client", type=int, default=16,
                        help="rooms one client address may sit in at once")
    parser.add_argument("--join-timeout", type=float, default=10.0,
                        help="seconds a connection has to finish its HTTP request and join a room")
    parser.add_argument("--lone-timeout", type=float, default=600.0,
                        help="seconds a peer may wait alone in its room before it is closed")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


async def _serve(server: SignalingServer) -> None:
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signal support: KeyboardInterrupt still ends it
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        print(f"serve-signaling: error: no token; pass --token or set {TOKEN_ENV} "
              "(peers must present the same shared secret)", file=sys.stderr)
        return 2
    try:
        server = SignalingServer(token, args.host, args.port, max_message_bytes=args.max_message_bytes,
                                 rate=args.rate, burst=args.burst, max_rooms=args.max_rooms,
                                 max_connections=args.max_connections,
                                 max_connections_per_client=args.max_connections_per_client,
                                 max_unjoined_per_client=args.max_unjoined_per_client,
                                 max_rooms_per_client=args.max_rooms_per_client,
                                 join_timeout=args.join_timeout, lone_timeout=args.lone_timeout)
    except ValueError as exc:
        print(f"serve-signaling: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # port taken, address not local
        print(f"serve-signaling: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
