import random
import wave

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.hardware.audio import WavFileSink
from edge_agent.hardware.errors import AudioError
from edge_agent.speech import announcement_text
from edge_agent.voice import VoicePack
from firmware_protocols.messages import AnnounceKind, Channel
from mqtt_link.backoff import Backoff

VOICE = VoicePack.builtin()


@given(st.sampled_from(list(Channel)), st.sampled_from(list(AnnounceKind)), st.integers(0, 10**12))
def test_voice_pack_speaks_every_announcement(channel, kind, fen):
    text = announcement_text(channel, kind, fen)
    assert "".join(VOICE.tokens(text)) == text


def test_phrases_are_one_clip_each():
    assert VOICE.tokens("微信收款十二点五元") == ["微信收款", "十", "二", "点", "五", "元"]


def test_missing_clip_is_a_clear_error():
    with pytest.raises(AudioError, match="no clip for 'X'"):
        VOICE.tokens("十X")


@pytest.mark.anyio
async def test_wav_sink_writes_a_playable_file(tmp_path):
    rendered = VOICE.render("P1", "支付宝到账一元")
    await WavFileSink(tmp_path).play(rendered)
    with wave.open(str(tmp_path / "P1.wav")) as played:
        assert (played.getnchannels(), played.getsampwidth(), played.getframerate()) == (1, 2, 16000)
        assert played.getnframes() * 2 == len(rendered.pcm)


def test_backoff_grows_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(4.0 <= d <= 8.0 for d in delays[5:])
    backoff.reset()
    assert backoff.next_delay() <= 0.5
