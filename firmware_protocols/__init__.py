"""The contracts both sides of the fleet speak, pure and I/O-free.

Device protocol v1 lives here (topic scheme, message models, announce signing), and so will
the serial codecs spoken to hardware. Nothing in this package opens a socket, a file or a
port, and it imports nothing else from the project.
"""
