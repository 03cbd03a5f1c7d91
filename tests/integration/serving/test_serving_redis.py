"""keel.serving against a real Redis online store, and `keel serve batch` end to end."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest
import redis
from testutil.isolation import redis_url, unique_name
from testutil.serving_artifacts import Keys, make_artifact, reference
from typer.testing import CliRunner

from keel.features import RedisOnlineStore
from keel.serving import ModelService, create_app, load_predictor

T0 = datetime(2026, 1, 1, tzinfo=UTC)
pytestmark = pytest.mark.integration


def test_predict_reads_features_from_redis(tmp_path: Path) -> None:
    keys = Keys()
    path, model = make_artifact(tmp_path, keys)
    prefix = unique_name("keeltest") + ":"
    store = RedisOnlineStore(redis_url(), prefix=prefix)
    try:
        store.write(
            "card_stats:v1", [(f"c{i}", {"f0": i, "f1": -i, "f2": 0.5}, T0) for i in range(50)]
        )

        async def main() -> list[dict[str, object]]:
            svc = ModelService("credit", load_predictor(path, keys.policy), store=store)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://t"
            ) as c:
                r = await c.post(
                    "/v1/predict",
                    json={
                        "instances": [
                            {"entity": f"c{i}", "features": {"channel": "web"}} for i in range(50)
                        ]
                    },
                )
                assert r.status_code == 200, r.text
                missing = await c.post(
                    "/v1/predict",
                    json={"instances": [{"entity": "zz", "features": {"channel": "web"}}]},
                )
                assert missing.status_code == 422 and missing.json()["code"] == "unknown_entity"
            await svc.aclose()
            return r.json()["predictions"]  # type: ignore[no-any-return]

        preds = asyncio.run(main())
        want = reference(model, [[float(i), float(-i), 0.5, 0.0] for i in range(50)])
        assert [p["p_default"] for p in preds] == pytest.approx(want, abs=1e-6)
    finally:
        r = redis.Redis.from_url(redis_url())
        for k in r.scan_iter(match=prefix + "*"):
            r.delete(k)
        store.close()


def test_redis_down_is_503_not_500(tmp_path: Path) -> None:
    keys = Keys()
    path, _ = make_artifact(tmp_path, keys)
    store = RedisOnlineStore(redis_url(), prefix=unique_name("keeltest") + ":")
    store._r.close()
    store._r = redis.Redis(host="127.0.0.1", port=1)  # after start, the server is unreachable

    async def main() -> httpx.Response:
        svc = ModelService("credit", load_predictor(path, keys.policy), store=store)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://t"
        ) as c:
            r = await c.post(
                "/v1/predict",
                json={"instances": [{"entity": "c1", "features": {"channel": "web"}}]},
            )
        await svc.aclose()
        return r

    r = asyncio.run(main())
    assert r.status_code == 503 and r.json()["code"] == "unavailable"


def test_keel_serve_batch_cli(tmp_path: Path) -> None:
    from keel_cli.main import app

    keys = Keys()
    (tmp_path / "pub.pem").write_bytes(keys.pub)
    path, model = make_artifact(tmp_path, keys, views=False)
    df = pl.DataFrame(
        {"f0": [1.0, 2.0], "f1": [0.0, 1.0], "f2": [3.0, 4.0], "channel": ["atm", "web"]}
    )
    df.write_parquet(tmp_path / "in.parquet")
    res = CliRunner().invoke(
        app,
        [
            "serve",
            "batch",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "out.parquet"),
            "--trust-key",
            str(tmp_path / "pub.pem"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["rows"] == 2
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["p_default"].to_list() == pytest.approx(
        reference(model, [[1, 0, 3, 2], [2, 1, 4, 0]]), abs=1e-6
    )
    bad = CliRunner().invoke(
        app,
        [
            "serve",
            "batch",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "o2.parquet"),
            "--trust-key",
            str(tmp_path / "in.parquet"),
        ],
    )
    assert bad.exit_code != 0
    unsigned = CliRunner().invoke(
        app,
        [
            "serve",
            "batch",
            "--model",
            str(path),
            "--input",
            str(tmp_path / "in.parquet"),
            "--output",
            str(tmp_path / "o3.parquet"),
        ],
    )
    assert unsigned.exit_code == 2 and "--trust-key" in unsigned.output
