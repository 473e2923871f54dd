"""From an alarm to a person: what a watch does with its events besides printing them.

    options.py   OutputOptions: clips, pre/post, retention, --exec, --webhook, --mqtt, --cooldown
    ring.py      the last seconds of the camera's encoded video, bounded in time and bytes
    clips.py     an event's clip (remuxed where the codec allows) and its snapshot; retention
    notify.py    bounded queues and their delivery threads; a command per event; the cooldown
    webhook.py   POST with retries; mqtt.py   topics per camera, availability, Home Assistant discovery
    outputs.py   EventOutputs: one camera's outputs, as vidanom.watch.Watcher drives them

Nothing here is imported by `import vidanom`; paho-mqtt only when MQTT is used.
"""

from .options import OutputOptions

__all__ = ["OutputOptions"]
