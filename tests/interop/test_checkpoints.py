import pytest
import torch

from ldexport.errors import LdexportError
from ldexport.interop.checkpoint import load_weights, read_checkpoint
from ldexport.interop.mmdet import save_mmdet_checkpoint, to_mmdet_state_dict
from ldexport.model import ModelConfig, build_detector

TINY = ModelConfig(depth=18, num_classes=3, base_channels=16, neck_channels=32, feat_channels=32, stacked_convs=1, norm_groups=8)


class Payload:
    """Pickled into a checkpoint; must never run when ldexport reads it."""

    ran = False

    def __setstate__(self, state):
        Payload.ran = True


def test_mmdet_round_trip(tmp_path):
    source = build_detector(TINY)
    save_mmdet_checkpoint(source, tmp_path / "mmdet.pth")
    saved = torch.load(tmp_path / "mmdet.pth", weights_only=True)
    assert "bbox_head.gfl_cls.weight" in saved["state_dict"] and "backbone.layer1.0.conv1.weight" in saved["state_dict"]
    target = build_detector(TINY)
    load_weights(target, tmp_path / "mmdet.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_mmdet_checkpoint_with_meta_objects_loads_without_running_them(tmp_path):
    source = build_detector(TINY)
    state = to_mmdet_state_dict(source.state_dict())
    payload = Payload()
    payload.x = 1
    torch.save({"meta": {"hub": payload, "epoch": 3}, "state_dict": state, "message_hub": [payload]}, tmp_path / "m.pth")
    Payload.ran = False
    checkpoint = load_weights(build_detector(TINY), tmp_path / "m.pth")
    assert checkpoint["meta"]["epoch"] == 3
    assert not Payload.ran


def test_teacher_keys_are_dropped(tmp_path):
    source = build_detector(TINY)
    state = to_mmdet_state_dict(source.state_dict())
    state["teacher_model.backbone.conv1.weight"] = torch.zeros(1)
    state["teacher_model.bbox_head.gfl_cls.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "ld.pth")
    torch.manual_seed(1)  # another initialisation: loading must replace every weight
    target = build_detector(TINY)
    load_weights(target, tmp_path / "ld.pth")
    loaded = target.state_dict()
    assert set(loaded) == set(source.state_dict())  # no teacher key came in
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_ldexport_training_checkpoint(tmp_path):
    source = build_detector(TINY)
    torch.save({"format": "ldexport", "model": source.state_dict(), "epoch": 1}, tmp_path / "l.pth")
    target = build_detector(TINY)
    load_weights(target, tmp_path / "l.pth")
    assert torch.equal(target.head.gfl_reg.weight, source.head.gfl_reg.weight)


def test_not_a_gfl_checkpoint(tmp_path):
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "cls.pth")
    with pytest.raises(LdexportError, match="not a GFL/LD detector"):
        load_weights(build_detector(TINY), tmp_path / "cls.pth")


def test_config_mismatch_names_a_key(tmp_path):
    torch.save({"model": build_detector(TINY).state_dict()}, tmp_path / "c3.pth")
    other = ModelConfig(**{**TINY.__dict__, "num_classes": 5})
    with pytest.raises(LdexportError, match="does not match the config.*gfl_cls"):
        load_weights(build_detector(other), tmp_path / "c3.pth")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LdexportError, match=r"junk.pth is not a torch checkpoint \(torch.save writes"):
        read_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "cut.pth").write_bytes(b"\x80\x02" + b"\x00" * 8)  # a legacy pickle, cut short
    with pytest.raises(LdexportError, match="cut.pth is not a readable torch checkpoint"):
        read_checkpoint(tmp_path / "cut.pth")
    # A legacy pickle holding an object: torch's advice (load with weights_only=False) is not passed on.
    import argparse

    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "objects.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(LdexportError, match="holds Python objects other than tensors") as raised:
        read_checkpoint(tmp_path / "objects.pth")
    assert "weights_only=False" not in str(raised.value)
    with pytest.raises(LdexportError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


def test_weights_sha256_names_the_weights_not_the_file(tmp_path):
    from ldexport.interop.checkpoint import load_detector, weights_sha256

    source = build_detector(TINY)
    torch.save({"model": source.state_dict(), "epoch": 1}, tmp_path / "best.pth")
    torch.save({"model": source.state_dict(), "epoch": 1, "optimizer": {"lr": 0.01}}, tmp_path / "latest.pth")
    save_mmdet_checkpoint(source, tmp_path / "mmdet.pth")
    loaded = [load_detector(TINY, tmp_path / name) for name in ("best.pth", "latest.pth", "mmdet.pth")]
    assert len({detector.checkpoint_sha256 for detector in loaded}) == 3
    assert {detector.weights_sha256 for detector in loaded} == {weights_sha256(source)}
    with torch.no_grad():
        source.head.scales[4].scale.mul_(1.0001)
    assert weights_sha256(source) != loaded[0].weights_sha256
