"""What a compressed file would cost on the wire in a call (``facecodec compress`` prints it).

A call sends each motion packet as a header extension element of an audio RTP packet
(``rtc.motion_over_audio``): it adds only the element's bytes to a packet that goes anyway.
The stream header, keyframes and reference patches go as data-channel messages, each paying
the DTLS/SCTP/UDP/IP overhead per chunk. Without audio, every packet is a data-channel
message, and the per-message overhead then dwarfs the motion itself. The overheads are the
transport's stated constants (``rtc.wire_cost``); the audio's own packets are not counted in either
figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from codec.files import CompressReport
from rtc.wire_cost import DATA_CHANNEL_OVERHEAD_BYTES, data_channel_message_wire_bytes, motion_on_audio_wire_bytes


@dataclass(frozen=True)
class WireEstimate:
    """kbit/s on the wire over the clip's duration, header and keyframes included."""

    call_kbps: float  # motion on the audio packets; header, keyframes and patches as data-channel messages
    call_motion_kbps: float  # the motion's share: what its elements add to the audio packets
    data_channel_kbps: float  # every packet one data-channel message (a call without audio)
    data_channel_motion_kbps: float  # the motion's share of it

    def to_dict(self) -> dict[str, float]:
        return {"wire_kbps_call": self.call_kbps, "wire_kbps_call_motion": self.call_motion_kbps,
                "wire_kbps_data_channel": self.data_channel_kbps,
                "wire_kbps_data_channel_motion": self.data_channel_motion_kbps,
                "data_channel_overhead_bytes": DATA_CHANNEL_OVERHEAD_BYTES}

    def summary(self) -> str:
        """Two lines in the layout of ``CompressReport.summary``."""
        return "\n".join([
            (f"  on the wire       {self.call_kbps:.2f} kbit/s as a call sends it (motion "
             f"{self.call_motion_kbps:.2f} on the audio RTP packets' header extension; header, "
             f"keyframes and patches {self.call_kbps - self.call_motion_kbps:.2f} as data-channel "
             f"messages; the audio besides)"),
            (f"  data channel only {self.data_channel_kbps:.2f} kbit/s with every packet a data-channel "
             f"message, as a call without audio sends it (motion {self.data_channel_motion_kbps:.2f}; "
             f"+{DATA_CHANNEL_OVERHEAD_BYTES} B a message)"),
        ])


def wire_estimate(report: CompressReport) -> WireEstimate:
    """The on-wire rates of a compressed file's packets, sent as a call would send them."""
    seconds = max(report.duration_s, 1e-9)
    messages = sum(data_channel_message_wire_bytes(size)
                   for size in [report.header_bytes, *report.message_sizes])
    motion_on_audio = sum(count * motion_on_audio_wire_bytes(size)
                          for size, count in report.motion_packet_sizes.items())
    motion_as_messages = sum(count * data_channel_message_wire_bytes(size)
                             for size, count in report.motion_packet_sizes.items())

    def kbps(wire_bytes: int) -> float:
        return 8.0 * wire_bytes / seconds / 1000.0

    return WireEstimate(call_kbps=kbps(messages + motion_on_audio), call_motion_kbps=kbps(motion_on_audio),
                        data_channel_kbps=kbps(messages + motion_as_messages),
                        data_channel_motion_kbps=kbps(motion_as_messages))
