"""Plain MLflow reads what Keel registered: models, versions, tags, aliases."""

from __future__ import annotations

import mlflow
from integration.registry.registry_support import ArtifactFactory, Backend

from keel.registry_client import Decision, Registry


def test_plain_mlflow_client_reads_keel_models(
    backend: Backend, registry: Registry, make_artifact: ArtifactFactory
) -> None:
    for i in range(2):
        registry.register(make_artifact(i, parent_version=i or None))
    name = make_artifact(0).name
    registry.promote(name, "champion", 2, Decision("carol", "ship it", "sha256:x"))

    client = mlflow.MlflowClient(
        tracking_uri=backend.tracking_uri, registry_uri=backend.tracking_uri
    )
    rm = client.get_registered_model(name)
    assert {a: str(v) for a, v in rm.aliases.items()} == {"champion": "2"}
    assert rm.tags["keel.audit_head"].startswith("1:")
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "2"
    assert champion.tags["keel.digest"] == make_artifact(1).digest
    assert champion.tags["keel.parent_version"] == "1"
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert champion.run_id
    run = client.get_run(champion.run_id)
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id, "keel")) == [
        "keel/manifest.json",
        "keel/model.keel",
    ]
