"""The payment bridge: the door from the payment backend to the merchants' speakers.

    notification --verify--> record durably --route--> publish signed announce (QoS 1)
        --> device ack --> delivery recorded with latency; unacked ones republished within TTL

Error tree (see `errors`):

    BridgeError
     ├── NotificationRejected      a notification we refuse (bad signature, malformed, ...)
     └── CoalescerClosed           a write submitted after the group commit stopped
"""
