"""3D patch sampling, augmentation and the Grain patch pipeline."""

import numpy as np
import pytest

from data_pipelines import patches, preprocess3d, volumes

NO_AUG = dict(flip_prob=0.0, rot90_prob=0.0, scale_prob=0.0, shift_prob=0.0)


def _blob_volume(shape=(40, 36, 30), box=(slice(15, 22), slice(12, 20), slice(10, 16))):
    label = np.zeros(shape, np.uint8)
    label[box] = 2
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0  # unique, > 0
    return image, label


def test_centres_follow_the_foreground_ratio():
    image, label = _blob_volume()
    rng = np.random.default_rng(0)
    for ratio in (0.0, 0.25, 1.0):
        cfg = patches.PatchConfig(patch_size=(8, 8, 8), num_samples=400, pos_ratio=ratio, **NO_AUG)
        centres, is_fg = patches.sample_centres(label, None, image, cfg, rng)
        # The blob is far from the borders, so no centre is moved and is_fg is the label at the centre.
        np.testing.assert_array_equal(label[tuple(centres.T)] > 0, is_fg)
        # Binomial(400, ratio): 3 sigma is at most 26 patches.
        assert abs(is_fg.sum() - 400 * ratio) <= 3 * np.sqrt(400 * ratio * (1 - ratio)) + 1e-9


def test_volume_without_foreground_uses_background_centres():
    label = np.zeros((10, 10, 10), np.uint8)
    cfg = patches.PatchConfig(patch_size=(4, 4, 4), num_samples=20, pos_ratio=1.0, **NO_AUG)
    centres, is_fg = patches.sample_centres(label, None, None, cfg, np.random.default_rng(1))
    assert not is_fg.any() and centres.shape == (20, 3)


@pytest.mark.parametrize("shape", [(40, 36, 30), (5, 36, 3), (2, 2, 2)])
def test_patch_always_has_the_patch_shape_and_the_right_content(shape):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0
    label = (image % 3).astype(np.uint8)
    cfg = patches.PatchConfig(patch_size=(8, 16, 8), num_samples=30, pos_ratio=0.5, **NO_AUG)
    centres, _ = patches.sample_centres(label, None, image, cfg, np.random.default_rng(2))
    offset = patches.pad_offset(shape, cfg.patch_size)
    for c in centres:
        im, lb = patches.extract_patch(image, label, c, cfg)
        assert im.shape == (8, 16, 8) and lb.shape == (8, 16, 8)
        inside = im > 0
        # Voxels from the volume form one box holding exactly the volume's values there; the rest is padding.
        start = c - np.array(cfg.patch_size) // 2 - offset
        lo = np.maximum(start, 0)
        hi = np.minimum(start + np.array(cfg.patch_size), shape)
        expected = image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.testing.assert_array_equal(im[inside], expected.ravel())
        assert inside.sum() == expected.size
        np.testing.assert_array_equal(lb[inside], label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].ravel())
        assert (lb[~inside] == 0).all()
        # Volumes smaller than the patch sit at the symmetric-padding offset (MONAI SpatialPad).
        if np.all(np.array(shape) <= cfg.patch_size):
            assert tuple(np.argwhere(inside).min(axis=0)) == tuple(offset)


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 4, size=(6, 6, 4)).astype(np.uint8)
    image = label.astype(np.float32) * 10.0 + 5.0
    cfg = patches.PatchConfig(patch_size=(6, 6, 4), flip_prob=0.5, rot90_prob=1.0, scale_prob=1.0, shift_prob=1.0)
    for _ in range(10):
        im, lb = patches.augment_patch(image, label, cfg, rng)
        assert im.shape == (6, 6, 4) and lb.shape == (6, 6, 4)
        # image = a * (10 label + 5) + b with a in [0.9, 1.1], b in [-0.1, 0.1] everywhere.
        a, b = np.polyfit(lb.ravel().astype(np.float64) * 10 + 5, im.ravel(), 1)
        np.testing.assert_allclose(im, a * (lb * 10.0 + 5.0) + b, atol=1e-4)
        assert 0.9 <= a <= 1.1 and -0.1 - 1e-5 <= b <= 0.1 + 1e-5
        assert np.bincount(lb.ravel(), minlength=4).tolist() == np.bincount(label.ravel(), minlength=4).tolist()


def test_rot90_needs_equal_patch_sizes_in_its_plane():
    with pytest.raises(ValueError, match="rot90 in axes"):
        patches.PatchConfig(patch_size=(16, 8, 8))
    patches.PatchConfig(patch_size=(16, 8, 8), rot90_prob=0.0)
    patches.PatchConfig(patch_size=(8, 8, 16), rot90_axes=(0, 1))


def _cache(tmp_path, n=3):
    rng = np.random.default_rng(4)
    refs = []
    for i in range(n):
        image, label = _blob_volume(shape=(20 + i, 14, 6))
        image = image / image.max() + 0.01 * rng.random(image.shape).astype(np.float32)
        vol_dir = tmp_path / "src"
        vol_dir.mkdir(exist_ok=True)
        import nibabel as nib

        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), str(vol_dir / f"img{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(vol_dir / f"lab{i}.nii.gz"))
        refs.append(volumes.CaseRef(f"c{i}", vol_dir / f"img{i}.nii.gz", vol_dir / f"lab{i}.nii.gz", "nifti"))
    cfg = preprocess3d.PreprocessConfig(intensity="none")
    preprocess3d.build_cache(refs, tmp_path / "cache", cfg, num_classes=3)
    return tmp_path / "cache", [r.name for r in refs]


def test_grain_pipeline_has_fixed_shapes_is_deterministic_and_shards(tmp_path):
    cache, names = _cache(tmp_path)
    cfg = patches.PatchConfig(patch_size=(16, 16, 8), num_samples=2, rot90_prob=0.5)
    ds = patches.patch_dataset(cache, names, cfg, seed=7, volumes_per_batch=2)
    batches = [ds[i] for i in range(4)]
    for b in batches:
        assert b["image"].shape == (4, 16, 16, 8, 1) and b["image"].dtype == np.float32
        assert b["mask"].shape == (4, 16, 16, 8, 1) and b["mask"].dtype == np.int32
        assert b["volume_index"].tolist()[0] == b["volume_index"].tolist()[1]  # 2 patches per volume
    again = patches.patch_dataset(cache, names, cfg, seed=7, volumes_per_batch=2)
    for i, b in enumerate(batches):
        np.testing.assert_array_equal(again[i]["image"], b["image"])
    other = patches.patch_dataset(cache, names, cfg, seed=8, volumes_per_batch=2)
    assert not np.array_equal(other[0]["image"], batches[0]["image"])
    # One epoch of 3 volumes in batches of 1 visits each volume once.
    one = patches.patch_dataset(cache, names, cfg, seed=7, volumes_per_batch=1)
    assert sorted(int(one[i]["volume_index"][0]) for i in range(3)) == [0, 1, 2]
    # Two processes see disjoint volumes whose union is all of them.
    seen = []
    for shard in range(2):
        ds_s = patches.patch_dataset(cache, names, cfg, seed=7, shard_index=shard, shard_count=2)
        seen.append({names[int(ds_s[i]["volume_index"][0])] for i in range(4)})
    assert seen[0] == {"c0", "c2"} and seen[1] == {"c1"}


def test_source_names_cases_missing_from_cache(tmp_path):
    cache, names = _cache(tmp_path, n=1)
    with pytest.raises(FileNotFoundError, match=r"\['nope'\]"):
        patches.CachedVolumeSource(cache, [*names, "nope"])
