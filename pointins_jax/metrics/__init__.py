"""Evaluation metrics usable without a model: numpy arrays in, plain dicts out.

* `semantic_iou`: per-class IoU / mIoU (ignore index -1).
* `instance_ap`: ScanNet-protocol AP / AP50 / AP25 (port of the official benchmark script).
* `panoptic_quality`: SemanticKITTI / Panoptic nuScenes PQ / SQ / RQ and mIoU.
* `unsupervised_instance_ap`: class-agnostic Hungarian-matched AP (PointINS Appendix C).
* `nuscenes_detection_metrics`: nuScenes detection AP per distance, TP errors, mAP, NDS.
The `*Evaluator` classes accumulate a split scene by scene.
"""
from pointins_jax.metrics.detection import DetectionEvaluator, nuscenes_detection_metrics
from pointins_jax.metrics.instance import InstanceAPEvaluator, instance_ap
from pointins_jax.metrics.panoptic import PanopticEvaluator, panoptic_quality
from pointins_jax.metrics.semantic import confusion_matrix, iou_from_confusion, semantic_iou
from pointins_jax.metrics.unsupervised import UnsupervisedAPEvaluator, unsupervised_instance_ap

__all__ = [
    "DetectionEvaluator", "InstanceAPEvaluator", "PanopticEvaluator", "UnsupervisedAPEvaluator",
    "confusion_matrix", "instance_ap", "iou_from_confusion", "nuscenes_detection_metrics",
    "panoptic_quality", "semantic_iou", "unsupervised_instance_ap",
]
