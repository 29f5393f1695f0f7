import pytest

from plasticity_core import assets


def test_missing_asset_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_CACHE", str(tmp_path))
    with pytest.raises(assets.AssetMissingError, match="plasticity assets fetch"):
        assets.asset_path("mobilenet_v2")
    from plasticity_core.models import load_backbone

    with pytest.raises(assets.AssetMissingError, match="plasticity assets fetch"):
        load_backbone("bundled:mobilenetv2_100")


@pytest.mark.assets
def test_cached_assets_verify():
    for row in assets.status():
        assert row["cached"], f"{row['key']} missing: run `plasticity assets fetch`"
        assert assets.sha256(assets.asset_path(row["key"])) == assets.ASSETS[row["key"]].sha256


def test_fetch_is_idempotent_and_verifies(tmp_path, monkeypatch):
    # a cached file with the right digest is kept; a corrupted one is fetched again
    src = assets.cache_dir() / assets.ASSETS["animal_labels"].filename
    if not src.is_file():
        pytest.skip("assets not fetched")
    monkeypatch.setenv("PLASTICITY_CACHE", str(tmp_path))
    (tmp_path / src.name).write_bytes(src.read_bytes())
    logs = []
    assets.fetch_assets(["animal_labels"], log=logs.append)
    assert logs == []  # nothing downloaded
    (tmp_path / src.name).write_bytes(b"corrupted")
    assets.fetch_assets(["animal_labels"], log=logs.append)
    assert assets.sha256(tmp_path / src.name) == assets.ASSETS["animal_labels"].sha256 and logs
