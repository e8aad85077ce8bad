"""`anodet serve`'s deployments: one nightly and one retraining deployment per depot, on that depot's crons."""

from flows.deployments import DepotSchedule, build_deployments


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
    assert deps["retrain-north"].flow_name != deps["nightly-north"].flow_name
