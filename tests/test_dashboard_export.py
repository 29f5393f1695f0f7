"""Export page (AppTest): the shown YAML/JSON are the previewed ReinitConfig; the diagnosis exports round-trip."""

import pandas as pd
import yaml

import plasticity_core as pc
from dashboard.testing import no_exception, previewed, tiny_app


def test_export_shows_the_previewed_config_and_the_diagnosis():
    at = tiny_app()
    at.switch_page("app_pages/diagnose.py").run()
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    previewed(at, "reset", "layer2.*")
    at.switch_page("app_pages/export.py").run()
    no_exception(at)
    cfg = at.session_state["reinit_cfg"]
    yaml_block = next(c.value for c in at.code if c.language == "yaml")
    loaded = pc.ReinitConfig.from_yaml(yaml_block)
    assert loaded == cfg and loaded.strategy == "reset" and loaded.resolved_layers
    assert loaded.metric_versions == at.session_state["diagnosis"].meta["metric_versions"]
    assert yaml.safe_load(yaml_block)["layers"] == ["layer2.*"]
    cli = next(c.value for c in at.code if c.language == "bash")
    assert cli.startswith("plasticity reinit --config reinit_config.yaml --model timm:test_resnet --random-init")
    wide = at.dataframe[-1].value
    pd.testing.assert_frame_equal(wide, at.session_state["diagnosis"].wide(), check_names=False)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["reinit_config.yaml", "reinit_config.json", "diagnosis.csv", "diagnosis.parquet", "heatmap.html"]
