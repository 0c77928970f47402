"""The shipped configs load, and each LD config's teacher can teach its student."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ldexport.cli import main
from ldexport.config import config_to_dict, load_config
from ldexport.errors import LdexportError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
HEAD_FIELDS = ("num_classes", "reg_max", "strides")


def _leaves(content: dict, prefix: tuple[str, ...] = ()):
    """``(key path, value)`` of every non-mapping value of a nested mapping."""
    for key, value in content.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _plain(value):
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_with_every_value_the_file_sets(path):
    """Each key the file sets reaches the loaded config with the file's value (a key read
    into the wrong field or dropped for its default would pass a load-only test)."""
    config = load_config(path)
    loaded = config_to_dict(config)
    leaves = list(_leaves(yaml.safe_load(path.read_text())))
    assert len(leaves) > 10
    for key, value in leaves:
        found = loaded
        for part in key:
            assert isinstance(found, dict) and part in found, (path.name, key)
            found = found[part]
        assert _plain(found) == _plain(value), (path.name, key, found, value)
    if config.distill.teacher is not None:
        assert all(getattr(config.model, f) == getattr(config.distill.teacher, f) for f in HEAD_FIELDS)


def test_mmdet_ld_recipes():
    for depth in (18, 34, 50):
        main = load_config(Path(CONFIGS[0].parent, f"ld_r{depth}-gflv1-r101_fpn_1x_coco.yaml"))
        full = load_config(Path(CONFIGS[0].parent, f"ld-vlr-kd_r{depth}-gflv1-r101_fpn_1x_coco.yaml"))
        assert main.model.depth == full.model.depth == depth and main.distill.teacher.depth == 101
        ld = main.distill
        assert (ld.ld_weight, ld.ld_temperature, ld.vlr_weight, ld.kd_weight) == (0.25, 10, 0, 0)
        assert (full.distill.vlr_weight, full.distill.kd_weight, full.distill.kd_temperature) == (0.25, 10, 2)
        assert main.train.epochs == 12 and main.train.steps == (8, 11) and main.train.lr == 0.01
    teacher = load_config(Path(CONFIGS[0].parent, "gfl_r101_fpn_ms-2x_coco.yaml"))
    assert teacher.train.epochs == 24 and teacher.train.steps == (16, 22) and teacher.data.scale_range == (480, 800)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.flip_prob=1.5", "'data.flip_prob' must be in [0, 1], got 1.5"),
        ("train.epochs=0", "'train.epochs' must be at least 1, got 0"),
        ("train.lr=-0.1", "'train.lr' must be above 0, got -0.1"),
        ("test.iou_threshold=0", "'test.iou_threshold' must be in (0, 1], got 0"),
        ("distill.teacher.depth=19", "'distill.teacher.depth' must be one of 18, 34, 50, 101, got 19"),
        ("model.strides=[]", "'model.strides' must be one stride a pyramid level: 8, 16, 32 (the backbone's), then each twice the last, got []"),
        ("model.strides=[8,16]", "'model.strides' must be one stride a pyramid level: 8, 16, 32 (the backbone's), then each twice the last, got [8, 16]"),
        ("model.strides=[8,16,32,64,100]", "'model.strides' must be one stride a pyramid level"),
        ("distill.teacher.strides=[4,8,16,32,64]", "'distill.teacher.strides' must be one stride a pyramid level"),
        ("train.lr=.inf", "'train.lr' must be a finite number, got inf"),
        ("train.lr=inf", "'train.lr' must be a finite number, got inf"),
        ("train.grad_clip=.inf", "'train.grad_clip' must be a finite number, got inf"),
        ("distill.ld_weight=.nan", "'distill.ld_weight' must be a finite number, got nan"),
        ("test.min_bbox_size=-.inf", "'test.min_bbox_size' must be a finite number, got -inf"),
        ("model.octave_base_scale=1e400", "'model.octave_base_scale' must be a finite number, got inf"),
        ("train.epochs=abc", "config key 'train.epochs' takes an integer, got 'abc'"),
        ("train.momentum=fast", "config key 'train.momentum' takes a number, got 'fast'"),
        ("train.lr=[1", "--set train.lr: not valid YAML (expected ',' or ']', but got '<stream end>' at line 1, column 3)"),
        ("data.scale_range=[800,480]", "'data.scale_range' must be two short sides, low <= high, got [800, 480]"),
        ("model.norm_groups=7", "norm_groups (7) must divide feat_channels"),
        ("train.device=tpu", "'train.device' must be one of auto, cuda, cpu, got 'tpu'"),
    ],
)
def test_out_of_range_values_are_refused(override, message, tmp_path):
    config = CONFIGS[0].parent / "ld-vlr-kd_r18-gflv1-r101_fpn_1x_coco.yaml"
    with pytest.raises(LdexportError) as error:
        load_config(config, [override])
    assert message in str(error.value) and "\n" not in str(error.value)
    # The command line: one line, exit 1, before anything is written.
    run = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "run"), "--set", override])
    assert run.exit_code == 1 and run.stderr.splitlines() == [f"ldexport: error: {error.value}"], run.output
    assert not (tmp_path / "run").exists()


def test_pyramids_of_other_depths_load():
    overrides = ["model.strides=[8,16,32]", "distill.teacher.strides=[8,16,32,64,128,256]"]
    config = load_config(CONFIGS[0].parent / "ld-vlr-kd_r18-gflv1-r101_fpn_1x_coco.yaml", overrides)
    assert config.model.strides == (8, 16, 32) and config.distill.teacher.strides == (8, 16, 32, 64, 128, 256)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe\x00garbage", "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"model:\n  depth: [18\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' at line 3, column 1"),
    ],
)
def test_unreadable_config_files_are_one_line(content, message, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    with pytest.raises(LdexportError) as error:
        load_config(config)
    assert str(error.value) == f"{config} {message}"
    run = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "run")])
    assert run.exit_code == 1 and run.stderr.splitlines() == [f"ldexport: error: {error.value}"], run.output
