"""The device's hardware behind small ports, each with real adapters and in-memory fakes.

    port         real adapters                                    fakes / simulated
    AudioSink    AplaySink (ALSA via aplay), WavFileSink            MemorySink
    TtsChip      SerialTtsChip (SYN6288 / XFS5152 over UART)        FakeTtsChip
    Modem        SerialModem (Quectel AT over UART)                 SimulatedModem
    Printer      SerialPrinter (ESC/POS over UART)                  FakePrinter
    SystemInfo   LinuxSystemInfo (/proc and /sys)                   FakeSystemInfo

Errors (one tree):

    HardwareError              a part did not do what was asked
     ├── AudioError            a voice pack or audio sink failed
     └── Unreachable           the part does not answer or its port is gone (it may come back)

Serial adapters run pyserial's blocking calls on a thread of their own, never on the event loop,
and reopen a port that disappeared once it is back (`serial_line.SerialLine`).
"""
