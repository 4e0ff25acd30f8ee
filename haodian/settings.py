"""Server-side settings, read once from the environment (prefix `HAODIAN_`) or a `.env` file.

Defaults are the embedded ones: leave `HAODIAN_MQTT_URL` and `HAODIAN_DATABASE_URL` unset and
the server starts an in-process amqtt broker and a private PostgreSQL in the data folder.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_server.inspection.detectors import InspectionThresholds


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAODIAN_", env_file=".env", extra="ignore", env_nested_delimiter="__")

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path(".haodian")
    # mqtt://user:password@host:port or mqtts://...; unset = embedded amqtt broker.
    mqtt_url: str | None = None
    # postgresql://...; unset = embedded PostgreSQL (pgserver) in data_dir/pg.
    database_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # Listen with SO_REUSEPORT, so several server processes share the port (set for each worker
    # by `haodian server --workers N`).
    http_reuse_port: bool = False
    # Server Ed25519 key signing announces (raw 32 bytes, base64, in a file). In development a
    # missing key is generated in data_dir; production refuses to start without one.
    signing_key_file: Path | None = None
    # The fleet's device master key (32 random bytes, base64, in a file): each device's MQTT
    # secret is derived from it, its id and a generation. Development generates one in data_dir.
    device_master_key_file: Path | None = None
    # Keys sealing sensitive merchant and field-agent fields at rest (JSON: active key id, keys
    # by id, and the lookup-hash key; see fleet_server.fieldcrypt). Development generates one.
    field_keys_file: Path | None = None
    # How far a device's signed MQTT password may be from the server's clock.
    device_auth_max_skew_s: Annotated[int, Field(ge=30, le=86_400)] = 600
    # The embedded broker's access control: on, only provisioned devices and the server's own
    # account connect, each limited to its own topics. Off only for trying things out by hand.
    broker_access_control: bool = True
    # TLS: the embedded broker's MQTT-over-TLS listener (port 8883 by default) and HTTPS for the
    # API, each with a certificate and key (PEM files). Unset: plain MQTT and HTTP only.
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    mqtt_tls_port: Annotated[int, Field(ge=0, le=65535)] = 8883
    http_tls_cert_file: Path | None = None
    http_tls_key_file: Path | None = None
    # Rate limits per client address: sign-in attempts a minute (password guessing), and payment
    # notifications a second (a flood, or a replay storm; the backend's real peak is far lower
    # per connection than the fleet's whole peak, and it retries what gets 429).
    login_attempts_per_min: Annotated[int, Field(ge=1, le=10_000)] = 10
    notifications_per_s: Annotated[int, Field(ge=1, le=1_000_000)] = 5_000
    # The payment backend's RSA public key (PEM) verifying its notifications.
    backend_public_key_file: Path | None = None
    # Where the bridge tells the backend about payments no device played (JSON, Ed25519-signed
    # with the server key); unset: not told, only listed at /api/v1/payments/not-announced.
    backend_webhook_url: str | None = None
    # Payment platforms' keys, re-read when the files change (rotation without a restart):
    # the Alipay public key (PEM; several blocks while a new key is rolled in), a folder of
    # WeChat Pay platform certificates and PUB_KEY_ID_*.pem public keys, and the merchant's
    # WeChat Pay APIv3 key (32 characters). Unset: that platform's notifications are refused.
    alipay_public_key_file: Path | None = None
    wechatpay_keys_dir: Path | None = None
    wechatpay_apiv3_key_file: Path | None = None
    # Who we are on each platform, as a JSON list: our WeChat Pay merchant ids (the service
    # provider's `sp_mchid` in partner mode, `mchid` in direct mode) and our Alipay `app_id`s. A
    # notification naming another is refused and recorded. Empty: not checked (development).
    # UnionPay's root and intermediate certificates (PEM, from UnionPay), which the signing
    # certificate each notification carries must chain to. Unset: UnionPay is refused.
    unionpay_root_cert_file: Path | None = None
    unionpay_middle_cert_file: Path | None = None
    wechatpay_mchids: list[Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]] = []
    alipay_app_ids: list[Annotated[str, Field(pattern=r"^[0-9]{1,32}$")]] = []
    # A payment older than this is not announced: a merchant hearing a payment minutes late is
    # confusing, and the customer has long gone. Devices enforce it too.
    announce_ttl_s: Annotated[int, Field(ge=5, le=3600)] = 120
    # A payment (or refund) whose platform time is older than this when it reaches us is
    # recorded and not announced (reason `stale`, listed for the merchant): "到账" minutes after
    # the customer left is wrong. A fresh one's TTL counts from its receipt.
    announce_max_age_s: Annotated[int, Field(ge=10, le=86_400)] = 300
    # Republish an announce whose ack has not come back after this long (QoS 1 already covers
    # broker hand-off; this covers a device that was offline or restarted mid-play).
    ack_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # MQTT client id prefix of the server processes; each part appends its role.
    mqtt_client_prefix: str = "haodian"
    ingest_batch_size: Annotated[int, Field(ge=1, le=50_000)] = 500
    ingest_flush_s: Annotated[float, Field(gt=0, le=10)] = 0.2
    # Acknowledge device messages to the broker only once stored (MQTT 5, manual acks). Unset:
    # on with an external broker, off with the embedded amqtt one, which drops a QoS 1 message
    # whose acknowledgement takes more than 5 s.
    ingest_ack_after_commit: bool | None = None
    # Several fleet-server or bridge processes split the device streams with shared
    # subscriptions: `$share/<group>-ingest/...` and `$share/<group>-bridge/...` (each process
    # needs its own HAODIAN_MQTT_CLIENT_PREFIX). Unset: plain subscriptions, as the embedded
    # amqtt broker needs (it has no shared subscriptions and would silently match nothing).
    mqtt_share_group: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = None
    # OTA: the release public keys (base64 raw Ed25519; the private keys stay offline with the
    # release team) that uploaded manifests must verify with; where artifacts are kept (default
    # data_dir/ota-artifacts); the base URL devices download them from (default: this server's
    # own address); and how often the conductor runs a round of every campaign.
    ota_release_keys: list[str] = Field(default_factory=list)
    ota_artifacts_dir: Path | None = None
    ota_artifact_base_url: Annotated[str | None, Field(pattern=r"^https?://[\x21-\x7e]{1,400}$")] = None
    ota_round_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    # The fleet server's address as people reach it (behind a proxy or load balancer), for the
    # links in task notifications; default: this server's own address.
    public_base_url: Annotated[str | None, Field(pattern=r"^https?://[\x21-\x7e]{1,400}$")] = None
    # How often the notifier looks for task notifications to send (it is also woken at once).
    notify_poll_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Inspection thresholds, e.g. HAODIAN_INSPECTION__LOST_AFTER_DAYS=3.
    inspection: InspectionThresholds = InspectionThresholds()
    # The fleet's local time for "a day" (power-on rate, daily rollup): China Standard Time.
    fleet_utc_offset_min: Annotated[int, Field(ge=-720, le=840)] = 480
    # Serving cells seen this long after installation (or first contact) are a device's location
    # fingerprint for the relocation detector.
    cell_learning_days: Annotated[float, Field(gt=0, le=365)] = 3.0
    # Raw telemetry kept this long (native partitions are dropped past it; Timescale's policy).
    telemetry_retention_days: Annotated[int, Field(ge=1, le=3650)] = 90
    # Timescale's chunks of raw telemetry are compressed once this old (native partitions have
    # no compression: the setting has nothing to do there, and the start log says so).
    telemetry_compress_after_days: Annotated[int, Field(ge=1, le=3650)] = 3
    # The pages' session cookie is sent only over HTTPS when true: set it behind TLS (a load
    # balancer terminating HTTPS included). Off in development, where the demo serves plain HTTP.
    cookie_secure: bool = False
    # How long a page's sign-in lasts before the page asks for the password again.
    session_hours: Annotated[float, Field(gt=0, le=24 * 30)] = 12.0
    log_json: bool = True
    log_level: str = "INFO"

    @property
    def acks_after_commit(self) -> bool:
        """Whether ingest acknowledges a message only after its commit (`ingest_ack_after_commit`,
        by default on with an external broker)."""
        explicit = self.ingest_ack_after_commit
        return explicit if explicit is not None else self.mqtt_url is not None

    @model_validator(mode="after")
    def _refuse_generated_keys_in_production(self) -> Self:
        if self.environment is Environment.PRODUCTION:
            missing = [
                name
                for name, value in (
                    ("HAODIAN_SIGNING_KEY_FILE", self.signing_key_file),
                    ("HAODIAN_BACKEND_PUBLIC_KEY_FILE", self.backend_public_key_file),
                    ("HAODIAN_MQTT_URL", self.mqtt_url),
                    ("HAODIAN_DATABASE_URL", self.database_url),
                    ("HAODIAN_DEVICE_MASTER_KEY_FILE", self.device_master_key_file),
                    ("HAODIAN_FIELD_KEYS_FILE", self.field_keys_file),
                )
                if value is None
            ]
            # A platform we take notifications from needs who we are on it: else a notification
            # addressed to another service provider would be taken as ours.
            missing += [
                ids
                for ids, keys, configured in (
                    ("HAODIAN_WECHATPAY_MCHIDS", "HAODIAN_WECHATPAY_KEYS_DIR", self.wechatpay_mchids),
                    ("HAODIAN_ALIPAY_APP_IDS", "HAODIAN_ALIPAY_PUBLIC_KEY_FILE", self.alipay_app_ids),
                )
                if getattr(self, keys.removeprefix("HAODIAN_").lower()) is not None and not configured
            ]
            if missing:
                raise ValueError(f"production needs explicit {', '.join(missing)}")
        for name, cert, key in (
            ("MQTT", self.mqtt_tls_cert_file, self.mqtt_tls_key_file),
            ("HTTP", self.http_tls_cert_file, self.http_tls_key_file),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"HAODIAN_{name}_TLS_CERT_FILE and HAODIAN_{name}_TLS_KEY_FILE go together")
        return self
