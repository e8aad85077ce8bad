"""`anodet serve`'s deployments: one nightly and one retraining deployment per depot, on that depot's crons, all
read from Settings (ANODET_DEPOTS, ANODET_NIGHTLY_CRON, ANODET_RETRAIN_CRON, ANODET_TIMEZONE) and validated there."""

import re

import pytest
from prefect.schedules import Cron

from anodet_core.config import InvalidSetting, Settings, local_timezone
from anodet_core.store.layout import Store
from flows.deployments import DepotSchedule, build_deployments, schedules


def test_one_nightly_and_one_retrain_deployment_per_depot():
    schedules = [DepotSchedule("north", "0 2 * * *", "0 4 * * 0", "Europe/Paris"),
                 DepotSchedule("south", "30 1 * * *", "0 5 * * 6", "UTC")]
    deps = {d.name: d for d in build_deployments(schedules)}
    assert set(deps) == {"nightly-north", "retrain-north", "nightly-south", "retrain-south"}
    for s in schedules:
        for kind, cron in (("nightly", s.nightly_cron), ("retrain", s.retrain_cron)):
            d = deps[f"{kind}-{s.depot}"]
            assert d.parameters == {"depot": s.depot}
            assert d.tags == ["anodet", kind, s.depot]
            assert [(x.schedule.cron, x.schedule.timezone) for x in d.schedules] == [(cron, s.timezone)]
    assert deps["nightly-north"].flow_name == "nightly-inspection"
    # a module path: a file path entrypoint would load flows/nightly.py as a script (no package, no relative imports)
    assert deps["nightly-north"].entrypoint == "flows.nightly.nightly_inspection"
    assert deps["retrain-north"].entrypoint == "flows.retrain.retrain"
    assert deps["retrain-north"].flow_name != deps["nightly-north"].flow_name


# ------------------------------------------------------------------------------------------ schedules from Settings


@pytest.fixture
def env(monkeypatch):
    """Set ANODET_* variables for one test (conftest removes every ANODET_* variable at start-up)."""
    def set_(**values: str) -> None:
        for k, v in values.items():
            monkeypatch.setenv(f"ANODET_{k.upper()}", v)

    return set_


def test_schedules_come_from_the_settings(env, tmp_path):
    env(store=str(tmp_path), depots="north, south@30 1 * * *,east@0,30 3 * * 1-5", nightly_cron="15 2 * * *",
        retrain_cron="0 5 * * sun", timezone="Europe/Paris")
    assert schedules(Settings.from_env()) == [
        DepotSchedule("north", "15 2 * * *", "0 5 * * sun", "Europe/Paris"),
        DepotSchedule("south", "30 1 * * *", "0 5 * * sun", "Europe/Paris"),
        DepotSchedule("east", "0,30 3 * * 1-5", "0 5 * * sun", "Europe/Paris"),
    ]
    deps = {d.name: d for d in build_deployments(schedules(Settings.from_env()))}
    east = deps["nightly-east"].schedules
    assert [(x.schedule.cron, x.schedule.timezone) for x in east] == [("0,30 3 * * 1-5", "Europe/Paris")]


def test_schedule_defaults_without_variables(env, tmp_path):
    store = Store(str(tmp_path))
    assert schedules(Settings(store=str(tmp_path))) == [DepotSchedule("demo", "0 2 * * *", "0 4 * * 0", local_timezone())]
    for depot in ("west", "east"):
        store.write_bytes(f"manifests/{depot}/2026-01-01.parquet", b"")
    assert [s.depot for s in schedules(Settings(store=str(tmp_path)))] == ["east", "west"]  # the store's depots
    assert [s.depot for s in schedules(Settings(store=str(tmp_path), depots="north"))] == ["north"]


def test_bench_depots_are_served_alone_never_beside_real_ones(env, tmp_path, capsys):
    from flows.cli import main

    store = Store(str(tmp_path))
    store.write_bytes("manifests/bench-8/2026-01-01.parquet", b"")
    store.mark_bench_depot("bench-8", "test")
    env(store=str(tmp_path), timezone="UTC")
    assert [s.depot for s in schedules(Settings.from_env())] == ["bench-8"]  # a store of bench data alone: served
    assert main(["serve", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("depot bench-8 [bench data]: nightly '0 2 * * *'")
    store.write_bytes("manifests/north/2026-01-01.parquet", b"")
    assert [s.depot for s in schedules(Settings.from_env())] == ["north"]  # beside a real depot: kept out
    assert main(["serve", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("depot north: ") and out[1].startswith("not served: bench depot bench-8 ")
    env(depots="north,bench-8")  # listed: served
    assert [s.depot for s in schedules(Settings.from_env())] == ["north", "bench-8"]
    assert store.nights("bench-8") == ["2026-01-01"]  # the marker is not a night


@pytest.mark.parametrize("name, raw", [
    ("depots", "north,../south"), ("depots", "north,north"), ("depots", "north@"), ("depots", "north@0 2 * *"),
    ("depots", "north@0 2 * * 1,s/x"), ("nightly_cron", "0 24 * * *"), ("nightly_cron", ""), ("retrain_cron", "@reboot"),
    ("retrain_cron", "H 4 * * 0"), ("timezone", "Mars/Olympus"), ("timezone", "utc"), ("timezone", "../etc/passwd"),
    ("timezone", "Factory"), ("timezone", "localtime"),
])
def test_bad_schedule_settings_raise_naming_the_variable(env, name, raw):
    env(**{name: raw})
    with pytest.raises(InvalidSetting, match=f"^ANODET_{name.upper()}={re.escape(repr(raw))}: "):
        Settings.from_env()


def test_serve_dry_run_prints_the_schedules_of_the_environment(env, tmp_path, capsys):
    from flows.cli import main

    env(store=str(tmp_path), depots="north@@daily", retrain_cron="0 6 * * 6", timezone="UTC")
    assert main(["serve", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == ["depot north: nightly '@daily', retrain '0 6 * * 6' (UTC)"]
    env(nightly_cron="99 * * * *")
    assert main(["serve", "--dry-run"]) == 2
    assert "ANODET_NIGHTLY_CRON='99 * * * *'" in capsys.readouterr().err


# what the settings accept must be what Prefect schedules; the rest must be refused before `anodet serve` starts
ACCEPTED = ["0 2 * * *", "30 1 * * *", "*/15 * * * *", "0 0-23/2 * * *", "0 2 * * mon-fri", "0 2 * * 1,3,5", "0 2 * * 7",
            "0 2 1,15 * *", "0 4 * jan-mar,dec sun", "5 4 * * SUN", "0 2 31 12 *", "59 23 * * 0-7/2", "00 02 * * *",
            "5/15 * * * *", "@daily", "@weekly", "@hourly", "@monthly", "@yearly", "@annually", "@midnight"]
REFUSED_BY_PREFECT = ["", "0 24 * * *", "60 * * * *", "0 2 0 * *", "0 2 * 13 *", "0 2 * * 8", "*/0 * * * *", "0 2 * * 1-",
                      "@reboot", "? 2 * * *", "H 2 * * *", "0 2 * * foo", "two * * * *"]
REFUSED_HERE_ONLY = ["0 2 * * * *", "0 2 * * * * *", "0 0 L * *", "0 0 * * 1#2", "5-1 * * * *", "0 2 ? * *"]


@pytest.mark.parametrize("cron", ACCEPTED)
def test_accepted_crons_are_prefects(cron):
    from prefect._internal.schemas.validators import validate_cron_string

    assert Settings(nightly_cron=cron).nightly_cron == cron
    assert validate_cron_string(cron) == cron
    assert Cron(cron, timezone="UTC").cron == cron


@pytest.mark.parametrize("cron", REFUSED_BY_PREFECT + REFUSED_HERE_ONLY)
def test_refused_crons(cron):
    from prefect._internal.schemas.validators import validate_cron_string

    with pytest.raises(InvalidSetting, match="not a cron expression"):
        Settings(retrain_cron=cron)
    if cron in REFUSED_BY_PREFECT:
        with pytest.raises(ValueError):
            validate_cron_string(cron)
    else:  # croniter's extras (seconds, year, L, #, wrapping ranges): deliberately not ours
        validate_cron_string(cron)


def test_every_accepted_timezone_is_prefects():
    from zoneinfo import available_timezones

    from prefect.client.schemas.schedules import is_valid_timezone

    zones = sorted(available_timezones() - {"Factory", "localtime"})  # the zone folder's two non-zones: refused above
    assert "Europe/Paris" in zones and "UTC" in zones
    for tz in zones:
        assert Settings(timezone=tz).timezone == tz
        assert is_valid_timezone(tz), tz
    assert Settings(timezone="").timezone == ""  # this machine's, resolved when the schedules are built
