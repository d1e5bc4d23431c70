"""deployments/backfill.py: each backfill run of a deployment with a fixed ``output`` writes its own folder (two
live runs into one folder are refused with OutputInUse), except an incremental extraction, whose watermark belongs
to its folder. The runs themselves: tests/deployments/test_deploy_e2e.py."""

from __future__ import annotations

from deployments.backfill import own_output


def test_each_backfill_run_gets_its_own_output_folder_under_the_deployments() -> None:
    label = "backfill-20260101T001500Z"
    assert own_output({"output": ".batchflows/deployed/customers/", "items": [1]}, label) == {
        "output": f".batchflows/deployed/customers/{label}"}
    assert own_output({"output": "s3://bucket/orders-raw"}, label) == {"output": f"s3://bucket/orders-raw/{label}"}
    assert own_output({"items": [1]}, label) == {}  # no output: nothing to separate
    assert own_output({"output": "out", "incremental": {"param": "since", "record_field": "updated_at"}}, label) == {}
