"""Segmentation metrics and loss against NumPy on handmade inputs."""

import jax
import numpy as np
import pytest

from train.tasks.segmentation import (
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    pixel_cross_entropy,
    summarize,
)


def _numpy_confusion(labels, preds, k, ignore=255):
    c = np.zeros((k, k), np.int64)
    for y, p in zip(labels.ravel(), preds.ravel(), strict=True):
        if 0 <= y < k and y != ignore:
            c[y, p] += 1
    return c


def test_handmade_confusion_iou_and_accuracy():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    preds = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    conf = np.asarray(confusion_matrix(labels, preds, 4))
    expected = np.array([[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(conf, expected)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 3 / (4 + 3 - 3) = 3/4; class 2: 1/2;
    # class 3 occurs nowhere: NaN, left out of the mean
    iou = np.asarray(iou_per_class(conf))
    np.testing.assert_allclose(iou[:3], [1 / 3, 3 / 4, 1 / 2], rtol=1e-6)
    assert np.isnan(iou[3])
    np.testing.assert_allclose(float(mean_iou(conf)), (1 / 3 + 3 / 4 + 1 / 2) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(pixel_accuracy(conf)), 5 / 7, rtol=1e-6)
    s = summarize(conf)
    assert s["iou_per_class"][3] is None
    np.testing.assert_allclose(s["miou"], float(mean_iou(conf)), rtol=1e-6)
    np.testing.assert_allclose(s["pixel_accuracy"], 5 / 7)


def test_a_predicted_but_absent_class_counts_as_zero():
    conf = np.asarray(confusion_matrix(np.array([0, 0]), np.array([0, 1]), 3))
    np.testing.assert_allclose(np.asarray(iou_per_class(conf))[:2], [0.5, 0.0])
    np.testing.assert_allclose(float(mean_iou(conf)), 0.25)


def test_random_inputs_match_numpy(rng):
    k = 6
    labels = rng.integers(0, k, (3, 17, 11))
    labels[rng.random(labels.shape) < 0.2] = 255
    preds = rng.integers(0, k, labels.shape)
    conf = jax.jit(confusion_matrix, static_argnums=2)(labels, preds, k)
    np.testing.assert_array_equal(np.asarray(conf), _numpy_confusion(labels, preds, k))


def test_ignored_pixels_change_nothing(rng):
    k = 5
    labels = rng.integers(0, k, (2, 8, 8))
    preds = rng.integers(0, k, labels.shape)
    logits = rng.standard_normal((*labels.shape, k)).astype(np.float32)
    base_conf = np.asarray(confusion_matrix(labels, preds, k))
    base_loss, base_n = pixel_cross_entropy(logits, labels)
    # extra pixels with the ignore label, whatever is predicted there, change nothing
    ignored = np.full((2, 8, 3), 255)
    labels2 = np.concatenate([labels, ignored], axis=-1)
    preds2 = np.concatenate([preds, rng.integers(0, k, ignored.shape)], axis=-1)
    logits2 = np.concatenate([logits, 100 * rng.standard_normal((2, 8, 3, k))], axis=-2)
    np.testing.assert_array_equal(np.asarray(confusion_matrix(labels2, preds2, k)), base_conf)
    loss2, n2 = pixel_cross_entropy(logits2.astype(np.float32), labels2)
    np.testing.assert_allclose(float(loss2), float(base_loss), rtol=1e-6)
    assert float(n2) == float(base_n) == labels.size
    # padded examples (weight 0) change nothing either
    conf_w = confusion_matrix(np.concatenate([labels, labels]), np.concatenate([preds, preds]),
                              k, weights=np.array([1, 1, 0, 0])[:, None, None])
    np.testing.assert_array_equal(np.asarray(conf_w), base_conf)


def test_cross_entropy_matches_numpy(rng):
    logits = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 4, 4))
    total, n = pixel_cross_entropy(logits, labels)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, labels[..., None], -1).sum()
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert float(n) == labels.size


def test_bad_confusion_shapes():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match="square"):
        mean_iou(np.zeros((2, 3)))
