"""Fréchet distance against pytorch-fid 0.3.0 (scipy 1.15.3), FID metric."""

import json

import keras
import numpy as np
import pytest

from uvim_keras.metrics import FID
from uvim_keras.metrics import InceptionWeightsError
from uvim_keras.metrics import activation_statistics
from uvim_keras.metrics import frechet_distance
from uvim_keras.metrics import inception_features
from uvim_keras.metrics.fid import sqrtm_fallback_needed

RTOL = 1e-6
ATOL_NEAR_ZERO = 1e-6


def load_case(root, case):
    arrays = dict(np.load(root / "fid" / f"{case}.npz"))
    with open(root / "fid" / f"{case}.json") as f:
        meta = json.load(f)
    return arrays, meta


def assert_fid_close(value, reference):
    assert abs(value - reference) <= max(RTOL * abs(reference),
                                         ATOL_NEAR_ZERO), (value, reference)


def test_statistics_match_fixture(fixtures_root, fid_case):
    a, _ = load_case(fixtures_root, fid_case)
    for i in (1, 2):
        mu, sigma = activation_statistics(a[f"features{i}"])
        assert mu.dtype == sigma.dtype == np.float64
        np.testing.assert_allclose(mu, a[f"mu{i}"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(sigma, a[f"sigma{i}"], rtol=1e-12,
                                   atol=1e-15)


def test_frechet_distance_matches_pytorch_fid(fixtures_root, fid_case):
    a, meta = load_case(fixtures_root, fid_case)
    value = frechet_distance(a["mu1"], a["sigma1"], a["mu2"], a["sigma2"])
    assert isinstance(value, float)
    assert_fid_close(value, meta["fid_pytorch_fid"])


def test_eps_fallback_decision_matches_pytorch_fid(fixtures_root, fid_case):
    a, meta = load_case(fixtures_root, fid_case)
    assert sqrtm_fallback_needed(a["sigma1"] @ a["sigma2"]) == bool(
        meta["eps_path_triggered"])


def test_fid_metric_from_features_in_chunks(fixtures_root, fid_case):
    a, meta = load_case(fixtures_root, fid_case)
    metric = FID(feature_extractor=lambda x: x)  # never called here
    f1, f2 = a["features1"], a["features2"]
    half1, half2 = len(f1) // 2, len(f2) // 3
    metric.update_state(real_features=f1[:half1],
                        generated_features=keras.ops.convert_to_tensor(
                            f2[:half2]))
    metric.update_state(real_features=f1[half1:])
    metric.update_state(generated_features=f2[half2:])
    assert_fid_close(metric.result(), meta["fid_pytorch_fid"])


@pytest.mark.multibackend
def test_fid_metric_with_callable_and_keras_model():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(64, 3, 2, 1)).astype(np.float32)
    fake = (rng.normal(size=(48, 3, 2, 1)) + 0.5).astype(np.float32)
    expected = frechet_distance(
        *activation_statistics(real.reshape(64, -1)),
        *activation_statistics(fake.reshape(48, -1)))
    metric = FID(feature_extractor=lambda x: x.reshape(len(x), -1))
    metric.update_state(real_images=real, generated_images=fake)
    assert metric.result() == pytest.approx(expected, rel=1e-12)
    keras.utils.clear_session()
    model = keras.Sequential([keras.Input((3, 2, 1)), keras.layers.Flatten()])
    metric = FID(feature_extractor=model, batch_size=10)
    metric.update_state(real_images=real)
    metric.update_state(generated_images=fake)
    assert metric.result() == pytest.approx(expected, rel=1e-5)
    metric.reset_state()
    with pytest.raises(ValueError, match="real features.*0 samples.*2"):
        metric.result()


def test_frechet_distance_closed_form():
    # Commuting diagonal covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i).
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + 14.0 + 5.0 - 2 * (2.0 + 2.0 + 0.0)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_fallback_criterion():
    d = 6
    base = np.eye(d) + 0.1
    s1, s2 = base.copy(), base.copy()
    s1[0, :] = s1[:, 0] = 0.0          # feature 0 constant in set 1
    assert not sqrtm_fallback_needed(s1 @ s2)
    s2[3, :] = s2[:, 3] = 0.0          # feature 3 constant in set 2
    assert sqrtm_fallback_needed(s1 @ s2)
    s2[0, :] = s2[:, 0] = 0.0          # feature 0 constant in both: decoupled
    s1[3, :] = s1[:, 3] = 0.0
    assert not sqrtm_fallback_needed(s1 @ s2)
    big1, big2 = np.eye(128), np.eye(128)
    big1[0, 0] = big2[5, 5] = 0.0      # blocked recurrence: no failure
    assert not sqrtm_fallback_needed(big1 @ big2)
    # The fallback only changes the square-root term (eps = 1e-6).
    s1 = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 0.5, 1.0]])
    s2 = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.5, 0.0, 1.0]])
    assert sqrtm_fallback_needed(s1 @ s2)
    shifted = (s1 + 1e-6 * np.eye(3)) @ (s2 + 1e-6 * np.eye(3))
    root_trace = np.sqrt(np.linalg.eigvals(shifted).astype(complex)).real.sum()
    value = frechet_distance(np.zeros(3), s1, np.ones(3), s2)
    assert value == pytest.approx(3.0 + 2.0 + 2.0 - 2 * root_trace, rel=1e-9)
    exact = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    assert abs(value - (7.0 - 2 * exact)) > 1e-5


# --- bad input ----------------------------------------------------------


def test_bad_feature_sets():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"features.*1 sample.*at least 2"):
        activation_statistics(rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match=r"features.*\(4,\).*\(n, d\)"):
        activation_statistics(rng.normal(size=4))
    bad = rng.normal(size=(5, 3))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="features.*non-finite"):
        activation_statistics(bad)
    metric = FID(feature_extractor=lambda x: x)
    with pytest.raises(ValueError, match=r"generated features.*dimension 5.*4"):
        metric.update_state(real_features=rng.normal(size=(8, 4)),
                            generated_features=rng.normal(size=(8, 5)))
    assert metric.real_features == []
    metric.update_state(real_features=rng.normal(size=(8, 4)))
    with pytest.raises(ValueError, match=r"generated_features.*dimension 3.*4"):
        metric.update_state(generated_features=rng.normal(size=(8, 3)))
    metric.update_state(generated_features=rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match=r"generated features.*1 sample.*2"):
        metric.result()
    with pytest.raises(ValueError, match="real.*both images and features"):
        metric.update_state(real_images=np.zeros((2, 4)),
                            real_features=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="feature_extractor.*int"):
        FID(feature_extractor=3)


def test_bad_statistics():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match=r"mu2.*dimension 4.*3"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"sigma1.*\(3, 2\).*\(3, 3\)"):
        frechet_distance(mu, np.ones((3, 2)), mu, sigma)
    with pytest.raises(ValueError, match=r"mu1.*\(3, 1\).*\(d,\)"):
        frechet_distance(np.zeros((3, 1)), sigma, mu, sigma)
    with pytest.raises(ValueError, match="mu2, sigma2.*non-finite"):
        frechet_distance(mu, sigma, np.array([0.0, np.inf, 0.0]), sigma)
    with pytest.raises(ValueError, match="sigma1, sigma2.*eigenvalue"):
        frechet_distance(mu, sigma, mu, -np.eye(3))


def test_config_round_trip(tmp_path):
    metric = FID(inception_weights=tmp_path / "w.h5", image_size=128,
                 batch_size=7, features="keras_inception_v3",
                 image_range=(-1, 1), name="fid5k")
    config = metric.get_config()
    json.dumps(config)
    clone = FID.from_config(config)
    assert (clone.name, clone.image_size, clone.batch_size,
            clone.inception_weights, clone.features, clone.image_range) == (
                "fid5k", 128, 7, str(tmp_path / "w.h5"), "keras_inception_v3",
                (-1.0, 1.0))
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metric))
    assert isinstance(clone, FID) and clone.batch_size == 7
    default = FID.from_config(FID().get_config())
    assert (default.features, default.inception_weights) == (
        "fid_inception", None)
    # A config saved before `features` existed meant Keras' InceptionV3.
    old = {"name": "fid", "dtype": None, "inception_weights": "imagenet",
           "image_size": 299, "batch_size": 50}
    assert FID.from_config(old).features == "keras_inception_v3"


# --- Keras' Inception-v3 extractor (features="keras_inception_v3") ---------
# The default FID Inception extractor is tested in test_fid_inception.py.


def test_missing_local_weights_file_explains_what_to_do(tmp_path):
    metric = FID(inception_weights=tmp_path / "missing.h5",
                 features="keras_inception_v3")
    with pytest.raises(InceptionWeightsError) as info:
        metric.update_state(real_images=np.zeros((2, 80, 80, 3), np.uint8))
    message = str(info.value)
    assert "missing.h5" in message and "is not a file" in message
    assert inception_features.WEIGHTS_URL in message
    assert "inception_weights=" in message and "feature_extractor" in message


def test_offline_download_failure_explains_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: network is unreachable")

    monkeypatch.setattr(inception_features.keras.utils, "get_file", offline)
    metric = FID(features="keras_inception_v3")  # weights "imagenet"
    with pytest.raises(InceptionWeightsError, match="network is unreachable") \
            as info:
        metric.update_state(generated_images=np.zeros((2, 80, 80, 3)))
    assert inception_features.WEIGHTS_FILE in str(info.value)
    assert "inception_weights=" in str(info.value)


@pytest.mark.large  # ~40 s of XLA compilation on a 2-core CPU
def test_inception_pipeline_shape_without_weights():
    keras.utils.clear_session()
    extractor = inception_features.InceptionFeatureExtractor(
        weights=None, image_size=75, batch_size=3)
    rng = np.random.default_rng(0)
    features = extractor(rng.integers(0, 256, (4, 40, 48, 1), dtype=np.uint8))
    assert features.shape == (4, 2048)
    assert np.all(np.isfinite(features)) and np.all(features >= 0)
    with pytest.raises(ValueError, match=r"image_size.*50.*>= 75"):
        inception_features.InceptionFeatureExtractor(weights=None,
                                                     image_size=50)
