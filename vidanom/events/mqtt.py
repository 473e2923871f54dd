"""Events on MQTT (paho-mqtt), one topic tree per camera, PREFIX/CAMERA/...:

    event         each event's JSON payload (QoS 1)
    health        each health change's JSON payload: down, back (QoS 1)
    state         ON while an event goes on (from the frame it is confirmed to its end), else OFF (retained)
    availability  online while the camera is watched and its stream flows; offline when the stream is
                  lost, when the watch ends, and (the broker's last will) when its process dies (retained)

With Home Assistant discovery each camera is announced (retained, at every connection) as a binary
sensor whose state is `state`, available by `availability`, with the latest event's JSON as its
attributes: it appears in Home Assistant without configuration.

paho's own thread connects, reconnects (after 1, 2, 4 ... 30 s) and sends; publishing only queues
(at most `queue` payloads while the broker is away; beyond that they are dropped and counted).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from typing import Any

from .. import __version__
from ..errors import OutputError
from .options import mqtt_address

KEEPALIVE = 30  # seconds between pings: the broker sends the last will after 1.5 times this at most
DISCOVERY_PREFIX = "homeassistant"  # Home Assistant's default
log = logging.getLogger("vidanom")


def topic_name(camera: str) -> str:
    """A camera's name as one topic level and a Home Assistant object id: [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", camera).strip("_") or "camera"


class MqttNotifier:
    name = "mqtt"

    def __init__(self, url: str, camera: str, queue: int, discovery: bool = False) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise OutputError("--mqtt needs paho-mqtt: pip install paho-mqtt") from exc
        self.host, self.port, prefix, user, password = mqtt_address(url)
        self.camera, self.discovery, self._queue_full = camera, discovery, mqtt.MQTT_ERR_QUEUE_SIZE
        slug = topic_name(camera)
        self.slug, self.base = slug, f"{prefix}/{slug}"
        self.sent = self.dropped = self.connects = 0
        self.last_error = ""
        self.online, self.on = False, False  # what availability and state say now
        self._waiting: dict[int, bool] = {}  # messages published, not yet acknowledged: whether a payload
        self._early: set[int] = set()  # acknowledged before publish() returned
        self._lock = threading.Lock()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vidanom-{slug}-{os.getpid()}")
        if user:
            client.username_pw_set(user, password)
        client.will_set(f"{self.base}/availability", "offline", qos=1, retain=True)
        client.max_queued_messages_set(queue)
        client.reconnect_delay_set(1, 30)
        client.on_connect, client.on_disconnect, client.on_publish = self._connected, self._disconnected, self._acked
        self.client = client  # before its thread starts: its first callback may come at once
        client.connect_async(self.host, self.port, keepalive=KEEPALIVE)
        client.loop_start()  # connects, and reconnects, in paho's thread

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._fail(f"the broker {self.host}:{self.port} refused the connection: {reason}")
            return
        self.connects += 1
        if self.discovery:
            self._publish(self._config_topic(), json.dumps(self._config()), retain=True)
        self.availability(self.online)
        self.state(self.on)

    def _disconnected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._fail(f"lost the broker {self.host}:{self.port} ({reason}); reconnecting")

    def _acked(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        # (called by paho holding its own lock: publish, which takes that lock too, is never called under ours)
        with self._lock:
            if mid in self._waiting:
                self.sent += self._waiting.pop(mid)
            else:
                self._early.add(mid)

    def _publish(self, topic: str, payload: str, retain: bool = False, counted: bool = False) -> None:
        """Queue a message (QoS 1); counted: a payload, whose delivery and drop the stats count."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            if info.rc == self._queue_full:
                self.dropped += counted
            elif info.mid in self._early:
                self._early.discard(info.mid)
                self.sent += counted
            else:
                self._waiting[info.mid] = counted

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            log.warning("mqtt: %s", message)
        self.last_error = message

    def _config_topic(self) -> str:
        return f"{DISCOVERY_PREFIX}/binary_sensor/vidanom_{self.slug}/anomaly/config"

    def _config(self) -> dict[str, Any]:
        return {
            "name": "Anomaly",
            "unique_id": f"vidanom_{self.slug}_anomaly",
            "state_topic": f"{self.base}/state",
            "payload_on": "ON",
            "payload_off": "OFF",
            "availability_topic": f"{self.base}/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
            "json_attributes_topic": f"{self.base}/event",
            "device": {
                "identifiers": [f"vidanom_{self.slug}"],
                "name": self.camera,
                "manufacturer": "vidanom",
                "model": "vidanom watch",
                "sw_version": __version__,
            },
        }

    def send(self, payload: dict[str, Any]) -> None:
        """Publish an event or health payload on its topic (QoS 1); never blocks."""
        topic = f"{self.base}/{'health' if payload.get('kind') == 'health' else 'event'}"
        self._publish(topic, json.dumps(payload), counted=True)

    def state(self, on: bool) -> None:
        self.on = on
        self._publish(f"{self.base}/state", "ON" if on else "OFF", retain=True)

    def availability(self, online: bool) -> None:
        self.online = online
        self._publish(f"{self.base}/availability", "online" if online else "offline", retain=True)

    @property
    def pending(self) -> int:
        """Payloads published and not yet acknowledged."""
        with self._lock:
            return sum(self._waiting.values())

    def close(self, timeout: float) -> None:
        """Say offline (and OFF), wait up to timeout s for what is queued to be acknowledged, disconnect.
        What was not acknowledged by then is counted as dropped."""
        self.state(False)
        self.availability(False)
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            self.dropped += sum(self._waiting.values())
            self._waiting.clear()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sent": self.sent, "dropped": self.dropped, "pending": self.pending}
        out.update(connected=self.client.is_connected(), connects=self.connects)
        if self.last_error:
            out["last_error"] = self.last_error
        return out
