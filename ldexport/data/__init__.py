"""Detection data: COCO / YOLO records, mmdet's LD transforms, batches, the generated
shapes data set, and COCO evaluation."""

from ldexport.data.coco import load_coco, to_coco_dict, write_coco_json
from ldexport.data.coco_eval import DetectionsLike, evaluate_coco
from ldexport.data.collate import Batch, BatchCollator
from ldexport.data.dataset import DetectionDataset
from ldexport.data.image_io import read_image, read_image_size
from ldexport.data.inference import prepare_images
from ldexport.data.loader import AspectRatioBatchSampler, build_loader
from ldexport.data.pipeline import DetectionTransform, ImageMeta, Sample, boxes_to_original
from ldexport.data.records import ImageRecord, RecordSet, filter_records
from ldexport.data.shapes import (
    SHAPE_CLASSES,
    ShapesConfig,
    ensure_shapes,
    generate_shapes,
    load_shapes,
)
from ldexport.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ldexport.data.yolo import load_yolo

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPE_CLASSES",
    "AspectRatioBatchSampler",
    "Batch",
    "BatchCollator",
    "DetectionDataset",
    "DetectionTransform",
    "DetectionsLike",
    "ImageMeta",
    "ImageRecord",
    "RecordSet",
    "Sample",
    "ShapesConfig",
    "boxes_to_original",
    "build_loader",
    "ensure_shapes",
    "evaluate_coco",
    "filter_records",
    "generate_shapes",
    "load_coco",
    "load_shapes",
    "load_yolo",
    "prepare_images",
    "read_image",
    "read_image_size",
    "to_coco_dict",
    "write_coco_json",
]
