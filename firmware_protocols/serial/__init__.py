"""Serial codecs spoken to the hardware inside a payment speaker or POS, sans-IO.

    tts     SYN6288 / XFS5152 text-to-speech chip frames and replies
    at      AT commands and responses of the 4G modem (Quectel style)
    escpos  ESC/POS receipts for the thermal printer, and its real-time status

Builders return bytes; decoders are fed bytes split anywhere and hand back whole frames. The
only exception a decoder raises is `firmware_protocols.errors.CodecError`, after skipping the
bad bytes, so the caller logs it and reads on.
"""
