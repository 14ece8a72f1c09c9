"""A run directory's identity across upgrades: keys added to the config since a run
was written are equal at their defaults; any real change is still refused."""
import json

import pytest

from experiments import config as config_lib, identity, train

ADDED = "init_from"  # a key newer configs have and older runs lack


def _without(cfg_dict, key):
  old = json.loads(json.dumps(cfg_dict))
  del old[key]
  return old


def test_an_old_run_without_a_new_key_resumes(tmp_path, micro_cfg):
  cfg = micro_cfg(**{"steps": 2, "checkpoint_every": 2})
  train.run(cfg, str(tmp_path))
  path = tmp_path / "config.json"
  path.write_text(json.dumps(_without(json.loads(path.read_text()), ADDED)))
  assert train.run(cfg, str(tmp_path))["status"] == "done"  # relaunched, not refused
  for key, value in (("model.width", 64), (ADDED, str(tmp_path))):
    with pytest.raises(ValueError, match=f"different config.*{key}"):
      train.run(micro_cfg(**{"steps": 2, "checkpoint_every": 2, key: value}), str(tmp_path))


def test_checkpoint_record_decides_by_content_when_config_json_is_lost(tmp_path, micro_cfg):
  new = config_lib.to_dict(micro_cfg())
  old = _without(new, ADDED)
  stored = {"fingerprint": config_lib.fingerprint(old), "config": old}
  note = identity.check(str(tmp_path), new, stored, {}, trained=True, write=True)
  assert "keys added since at their defaults" in note
  changed = json.loads(json.dumps(new))
  changed[ADDED] = "/elsewhere"
  (tmp_path / "config.json").unlink()
  with pytest.raises(identity.ConfigMismatch, match=ADDED):
    identity.check(str(tmp_path), changed, stored, {}, trained=True, write=False)
