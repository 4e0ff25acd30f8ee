"""An edge agent on fakes (speaker, modem, clock), no broker, and signed messages for it.

Messages reach the agent the way the link hands them over (`deliver`: a topic and payload to its
downlink). Without a broker every uplink lands in the agent's outbox, which is where tests read
the acks, events and command results from (`uplinks`); queued announcements are played one by
one with the announcer's public step (`play_all`).
"""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from edge_agent.hardware.modem import SimulatedModem
from edge_agent.voice import ClipSpeaker, VoicePack
from firmware_protocols import topics
from firmware_protocols.messages import Announce, Command, Message, OtaOffer, Settings
from firmware_protocols.signing import Signer, encode_public_key
from mqtt_link.link import Delivery

SERVER_KEY = Ed25519PrivateKey.generate()
SIGNER = Signer(SERVER_KEY)


def make_config(tmp_path, **changes):
    return AgentConfig(
        device_id="SPK1",
        broker_url="mqtt://127.0.0.1:9",
        state_dir=tmp_path,
        server_keys=[encode_public_key(SERVER_KEY.public_key())],
        **changes,
    )


def make_agent(tmp_path, clock, sink, http_transport=None, system=None, **changes):
    return EdgeAgent(
        make_config(tmp_path, **changes),
        speaker=ClipSpeaker(VoicePack.builtin(), sink),
        modem=SimulatedModem(seed=1),
        system=system,
        clock=clock,
        http_transport=http_transport,
    )


KIND_OF = {
    Announce: topics.Down.ANNOUNCE,
    Command: topics.Down.COMMAND,
    Settings: topics.Down.SETTINGS,
    OtaOffer: topics.Down.OTA,
}


async def deliver(agent, message: Message | bytes, kind: topics.Down | None = None):
    """Hand `message` (a model, or raw bytes on `kind`'s topic) to the agent as its link would."""
    if isinstance(message, bytes):
        payload = message
    else:
        payload, kind = message.to_json(), kind or KIND_OF[type(message)]
    await agent.downlink.deliver(Delivery(topics.down(agent.device_id, kind), payload))


def announce(clock, payment_id="P1", **changes):
    fields = {
        "device_id": "SPK1",
        "ts": clock.now_ms(),
        "payment_id": payment_id,
        "amount_fen": 1250,
        "channel": "wechat",
        "paid_at": clock.now_ms(),
        "issued_at": clock.now_ms(),
        "ttl_s": 60,
        "key_id": SIGNER.key_id,
    }
    return SIGNER.sign(Announce.model_validate({**fields, **changes}))


def uplinks(agent):
    return [(item.topic.rsplit("/", 1)[1], json.loads(item.payload)) for item in agent.uplink.outbox.drain()]


async def play_all(agent):
    while await agent.announcer.play_next():
        pass


def command(clock, name, command_id="C1", **changes):
    fields = {
        "device_id": "SPK1",
        "ts": clock.now_ms(),
        "command_id": command_id,
        "name": name,
        "issued_at": clock.now_ms(),
        "ttl_s": 60,
        "key_id": SIGNER.key_id,
    }
    return SIGNER.sign(Command.model_validate({**fields, **changes}))


def settings(clock, version=1, **changes):
    fields = {"device_id": "SPK1", "ts": clock.now_ms(), "version": version, "key_id": SIGNER.key_id}
    return SIGNER.sign(Settings.model_validate({**fields, **changes}))
