"""The command line and the settings: helpful, and strict about bad input."""

import logging
import subprocess
import sys

import pytest
import structlog

from fleet_server.db.pool import with_database
from fleet_server.db.timescale import Facts, decide
from haodian.cli import build_parser, main
from haodian.settings import Settings


@pytest.fixture(autouse=True)
def _restore_logging():
    """`main` configures logging for the process; put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


@pytest.mark.parametrize(
    "command", ["demo", "server", "broker", "agent", "sim", "pay", "keys", "users", "login", "logout"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: haodian" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--devices", "0"], "must be at least 1"),
        (["demo", "--tps", "-5"], "must be greater than 0"),
        (["server", "--port", "70000"], "port must be 0-65535"),
        (["agent", "--device-id", "X"], "invalid choice"),
        (["agent", "run", "--health-interval", "0"], "must be greater than 0"),
        (["agent", "diagnose", "--lang", "fr"], "invalid choice"),
        (["fly"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_agent_configuration_problems_are_named(tmp_path, capsys):
    assert main(["agent", "run", "--device-id", "X", "--state-dir", str(tmp_path)]) == 2
    assert "server_keys: Field required" in capsys.readouterr().err
    config = tmp_path / "agent.toml"
    config.write_text('device_id = "SPK1"\nserver_keys = []\nvolume = 11\n')
    assert main(["agent", "diagnose", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"bad agent configuration in {config}" in err
    assert "server_keys" in err
    assert "volume" in err
    config.write_text("device_id = ")
    assert main(["agent", "run", "--config", str(config)]) == 2
    assert "cannot read agent configuration" in capsys.readouterr().err


def test_bad_amount_for_pay_is_explained(tmp_path):
    with pytest.raises(SystemExit, match="at most 2 decimals"):
        main(["pay", "--merchant", "M1", "--amount", "1.234", "--data-dir", str(tmp_path)])


def test_server_parts_are_checked():
    with pytest.raises(SystemExit, match="--parts takes fleet, bridge and/or ingest"):
        main(["server", "--parts", "fleet,bogus"])


def test_server_workers_refuse_the_fleet_part_and_embedded_services(monkeypatch):
    monkeypatch.delenv("HAODIAN_MQTT_URL", raising=False)
    monkeypatch.delenv("HAODIAN_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="run fleet once"):
        main(["server", "--parts", "fleet,bridge", "--workers", "2"])
    with pytest.raises(SystemExit, match="needs a broker and a database the workers share"):
        main(["server", "--parts", "bridge", "--workers", "2"])


def test_event_loop_setting_is_checked(monkeypatch):
    monkeypatch.setenv("HAODIAN_EVENT_LOOP", "tokio")
    with pytest.raises(SystemExit, match="HAODIAN_EVENT_LOOP must be one of auto, uvloop, asyncio"):
        main(["server"])


def test_bench_takes_its_own_arguments():
    """`haodian bench` hands the process to the benchmarks with every argument after it."""

    def haodian(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "haodian", *args], capture_output=True, text=True, timeout=60, check=False
        )

    usage = haodian("bench", "-h")
    assert usage.returncode == 0
    assert "announce" in usage.stdout
    refused = haodian("bench", "announce", "--rate", "-5")
    assert refused.returncode != 0
    assert "--rate must be positive" in refused.stderr


def test_bad_configuration_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("HAODIAN_HTTP_PORT", "abc")
    assert main(["server"]) == 2
    assert "bad configuration: HAODIAN_HTTP_PORT: Input should be a valid integer" in capsys.readouterr().err


def test_production_refuses_generated_keys_and_embedded_services(monkeypatch):
    monkeypatch.setenv("HAODIAN_ENVIRONMENT", "production")
    with pytest.raises(ValueError, match="HAODIAN_SIGNING_KEY_FILE"):
        Settings(_env_file=None)


def test_production_takes_a_platforms_notifications_only_knowing_who_we_are_on_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HAODIAN_ENVIRONMENT", "production")
    explicit = {
        name: tmp_path / name
        for name in ("signing_key_file", "backend_public_key_file", "device_master_key_file", "field_keys_file")
    }
    services = {"mqtt_url": "mqtts://broker:8883", "database_url": "postgresql://db/haodian"}
    Settings(_env_file=None, **explicit, **services)  # no platform configured: nothing more needed
    with pytest.raises(ValueError, match="HAODIAN_WECHATPAY_MCHIDS") as refused:
        Settings(
            _env_file=None, **explicit, **services, wechatpay_keys_dir=tmp_path, alipay_public_key_file=tmp_path / "a"
        )
    assert "HAODIAN_ALIPAY_APP_IDS" in str(refused.value)
    Settings(
        _env_file=None,
        **explicit,
        **services,
        wechatpay_keys_dir=tmp_path,
        wechatpay_mchids=["1230000109"],
        alipay_public_key_file=tmp_path / "a",
        alipay_app_ids=["2014072300007148"],
    )


def test_agent_side_imports_nothing_server_side():
    """The device installs only the base dependencies; the agent must not need the rest."""
    code = (
        "import sys, edge_agent.agent, edge_agent.bootstrap, firmware_protocols.signing, haodian.logs\n"
        "heavy = sorted(m for m in ('fastapi', 'psycopg', 'uvicorn', 'amqtt', 'pgserver') if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://postgres@127.0.0.1:5432/t1"),
        (
            "postgresql://u:p%40ss@db.example:6543/admin?sslmode=require",
            "postgresql://u:p%40ss@db.example:6543/t1?sslmode=require",
        ),
        ("postgresql://postgres@/postgres?host=/tmp/pg", "postgresql://postgres@/t1?host=/tmp/pg"),
        ("postgresql://postgres@localhost", "postgresql://postgres@localhost/t1"),
    ],
)
def test_a_database_url_names_another_database_keeping_the_server(url, expected):
    assert with_database(url, "t1") == expected


@pytest.mark.parametrize(
    ("facts", "timescale_mode", "why"),
    [
        (Facts(created=True, installed=True, preloaded=True, superuser=False), True, "loaded in this database"),
        (Facts(created=False, installed=False, preloaded=False, superuser=True), False, "not installed"),
        (Facts(created=False, installed=True, preloaded=False, superuser=True), False, "not in shared_preload"),
        (Facts(created=False, installed=True, preloaded=True, superuser=False), False, "may not create"),
        (Facts(created=False, installed=True, preloaded=False, superuser=False), False, "may not create"),
        (Facts(created=False, installed=True, preloaded=True, superuser=True), True, "preloaded: created"),
    ],
)
def test_the_telemetry_storage_is_chosen_from_what_the_server_says(facts, timescale_mode, why):
    decision = decide(facts)
    assert decision.timescale is timescale_mode
    assert why in decision.reason
    assert decision.timescale or decision.reason.endswith("native partitions")
