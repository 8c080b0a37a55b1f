"""Regions are separate deployments: us, eu and jp, each with its own database and bucket prefix.

A key works only in the region that issued it (the others answer ``bse_region_mismatch``
naming its host), and nothing one region stores is visible from another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Caller, Harness
from tests.test_storage_s3 import bucket_keys

REGIONS = ("us", "eu", "jp")


async def test_three_regions_share_no_keys_and_no_data(
    harness_factory: Callable[..., Any],
    tmp_path: Path,
    s3_settings: dict[str, Any],
    moto_endpoint: str,
    s3_bucket: str,
) -> None:
    deployments: dict[str, Harness] = {}
    for region in REGIONS:
        deployments[region] = await harness_factory(
            region=region,
            data_dir=tmp_path / region,
            database_url="",  # its own database (SQLite in its data dir), whatever the test run
            **{**s3_settings, "storage_url": f"s3://{s3_bucket}/{region}"},
        )
    callers = {region: await h.caller() for region, h in deployments.items()}
    made: dict[str, str] = {}
    for region, caller in callers.items():
        assert caller.key.startswith(f"bye_{region}_")
        created = await caller.create_image()
        assert created.status_code == 200, created.text
        made[region] = (await caller.wait(created.json()["data"]["generation_id"]))["generation_id"]

    for home, caller in callers.items():
        for region, h in deployments.items():
            visiting = Caller(h.client, caller.account_id, caller.key, caller.key_id)
            answer = await visiting.get("/v1/status")
            if region == home:
                assert answer.status_code == 200
                continue
            assert answer.status_code == 401
            assert answer.json()["code"] == "BSE1002"
            assert f"api.{home}." in answer.json()["message"]
            # The generation is not there either, whoever asks: its id names nothing in this region.
            local = callers[region]
            assert (await local.get(f"/v1/content/{made[home]}")).status_code == 404

    for region in REGIONS:
        keys = await bucket_keys(moto_endpoint, s3_bucket, prefix=region)
        assert keys and all(k.startswith(f"{region}/{made[region]}/") for k in keys), keys
