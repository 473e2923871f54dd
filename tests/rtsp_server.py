"""A tiny RTSP server on loopback for the tests and benchmarks: GStreamer's gst-rtsp-server serving
one H.264 clip (MP4 or Matroska) in real time, each client from the clip's start.

Run it with the system Python that has GStreamer's introspection (`/usr/bin/python3`, packages
python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,bad}):

    /usr/bin/python3 tests/rtsp_server.py CLIP [--port 0] [--udp-only] [--path /cam]
    /usr/bin/python3 tests/rtsp_server.py --check     # exit 0 if it can run here, else say what is missing

It binds 127.0.0.1 only, prints `ready PORT` on stdout once it listens, and serves until killed.
"""

from __future__ import annotations

import argparse
import sys


ELEMENTS = ("filesrc", "qtdemux", "matroskademux", "h264parse", "rtph264pay")


def main() -> None:
    args = _parse()
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
    except (ImportError, ValueError) as exc:
        sys.exit(f"GStreamer's RTSP server is not available to {sys.executable}: {exc}")
    Gst.init(None)
    missing = [name for name in ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        sys.exit(f"GStreamer lacks the elements {', '.join(missing)}")
    if args.check:
        return
    if not args.clip:
        sys.exit("pass the clip to serve")
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    demux = "matroskademux" if args.clip.endswith((".mkv", ".webm")) else "qtdemux"
    # SPS and PPS in-band before every keyframe, as cameras send them (rtph264pay config-interval=-1
    # instead made FFmpeg decode one extra, grey keyframe per keyframe)
    factory.set_launch(
        f'( filesrc location="{args.clip}" ! {demux} ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )'
    )
    if args.udp_only:
        factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", nargs="?", help="an H.264 clip in MP4 or Matroska")
    parser.add_argument("--check", action="store_true", help="only check that the server can run here")
    parser.add_argument("--port", type=int, default=0, help="TCP port for RTSP (0: a free one)")
    parser.add_argument("--path", default="/cam", help="the stream's path on the server")
    parser.add_argument("--udp-only", action="store_true", help="offer RTP over UDP only, not over TCP")
    return parser.parse_args()


if __name__ == "__main__":
    main()
