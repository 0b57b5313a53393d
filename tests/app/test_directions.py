"""Attribute directions: recovery of planted directions, calibration, the file format and the CLI end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from flow_model import Glow, GlowConfig
from app.cli import main
from flow_model.data import load_images, open_dataset
from app.directions import DirectionConfig, Directions, compute_directions, load_directions, nullspace_basis


def _planted(n: int, d: int, seed: int, covariance: np.ndarray | None = None, noise: float = 0.05):
    """Latents, +/-1 labels of sign(t . x + small noise) and the true unit normal t."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    if covariance is not None:
        x = x @ np.linalg.cholesky(covariance).T
    t = rng.standard_normal(d)
    t /= np.linalg.norm(t)
    y = np.where(x @ t + 0.3 + noise * rng.standard_normal(n) > 0, 1, -1)
    return x.astype(np.float32), y[:, None], t


def _cos(a: torch.Tensor, b: np.ndarray) -> float:
    a = a.double().numpy()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_isotropic_latents_recover_the_true_direction_with_both_methods():
    x, y, t = _planted(3000, 20, seed=0)
    d = compute_directions(x, y, ["attr"], DirectionConfig(C=1.0), progress=False)
    assert _cos(d.vector("attr", "classifier"), t) > 0.99
    assert _cos(d.vector("attr", "mean_diff"), t) > 0.97
    assert d.info["attr"]["classifier"]["auc"] > 0.99
    assert d.info["attr"]["mean_diff"]["auc"] > 0.98
    assert d.info["attr"]["classifier"]["accuracy"] > 0.95


def test_classifier_finds_the_normal_where_correlated_latents_bias_the_mean_difference():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 20))
    covariance = a @ a.T / 20 + 0.1 * np.eye(20)
    x, y, t = _planted(4000, 20, seed=2, covariance=covariance)
    d = compute_directions(x, y, ["attr"], DirectionConfig(C=1.0), progress=False)
    clf, md = _cos(d.vector("attr", "classifier"), t), _cos(d.vector("attr", "mean_diff"), t)
    assert clf > 0.98
    assert md < clf - 0.1  # the mean difference is Sigma t, not t
    assert d.info["attr"]["classifier"]["auc"] > 0.99
    assert d.info["attr"]["classifier"]["auc"] > d.info["attr"]["mean_diff"]["auc"]


def test_adding_a_vector_to_the_mean_negative_moves_it_to_the_mean_positive():
    x, y, _ = _planted(2000, 16, seed=3, covariance=np.diag(np.linspace(0.2, 3.0, 16)))
    d = compute_directions(x, y, ["attr"], DirectionConfig(C=1.0), progress=False)
    pos, neg = x[y[:, 0] > 0].astype(np.float64), x[y[:, 0] < 0].astype(np.float64)
    mean_pos, mean_neg = pos.mean(0), neg.mean(0)
    np.testing.assert_allclose(mean_neg + d.vector("attr", "mean_diff").double().numpy(), mean_pos, atol=1e-5)
    v = d.vector("attr", "classifier").double().numpy()
    u = v / np.linalg.norm(v)
    assert (mean_neg + v) @ u == pytest.approx(mean_pos @ u, abs=1e-5)
    assert d.info["attr"]["classifier"]["norm"] == pytest.approx(np.linalg.norm(v), rel=1e-5)
    assert (mean_pos - mean_neg) @ u > 0  # the normal points to the positives


def test_rare_and_empty_attributes_fall_back_to_finite_mean_differences():
    x, y, _ = _planted(500, 12, seed=4)
    rare = -np.ones(500, dtype=int)
    rare[:4] = 1
    empty = -np.ones(500, dtype=int)
    labels = np.stack([y[:, 0], rare, empty], axis=1)
    d = compute_directions(x, labels, ["common", "rare", "empty"], progress=False)
    for name in ("rare", "empty"):
        stats = d.info[name]["classifier"]
        assert stats["fallback"] is True and math.isnan(stats["auc"]) and math.isnan(stats["accuracy"])
        assert torch.equal(d.vector(name, "classifier"), d.vector(name, "mean_diff"))
    assert d.info["common"]["classifier"]["fallback"] is False
    assert d.info["rare"]["mean_diff"]["n_pos"] == 4
    assert torch.count_nonzero(d.vector("empty", "mean_diff")) == 0
    for m in ("mean_diff", "classifier"):
        assert torch.isfinite(d.vectors[m]).all() and d.vectors[m].shape == (3, 12)
        assert torch.isfinite(d.gram[m]).all()
        assert torch.count_nonzero(d.gram[m][2]) == 0  # a zero vector is orthogonal to everything


def test_gram_matrices_are_cosine_similarities():
    x, _, _ = _planted(800, 10, seed=5)
    rng = np.random.default_rng(6)
    labels = np.where(x[:, :4] + 0.5 * rng.standard_normal((800, 4)) > 0, 1, -1)
    d = compute_directions(x, labels, ["a", "b", "c", "d"], progress=False)
    for m in ("mean_diff", "classifier"):
        v = d.vectors[m].double()
        expected = (v @ v.T) / torch.outer(v.norm(dim=1), v.norm(dim=1))
        torch.testing.assert_close(d.gram[m].double(), expected, atol=1e-5, rtol=0)
        assert torch.allclose(d.gram[m].diagonal(), torch.ones(4))


@pytest.mark.parametrize(
    "latents, labels, names, message",
    [
        (np.zeros((10, 4)), np.zeros((10, 1)), ["a"], "labels must be"),
        (np.zeros((10, 4)), np.ones((9, 1)), ["a"], "labels must be"),
        (np.full((10, 4), np.nan), np.ones((10, 1)), ["a"], "non-finite"),
        (np.zeros((10, 4)), np.ones((10, 2)), ["a", "a"], "distinct attribute names"),
        (np.zeros(10), np.ones((10, 1)), ["a"], "latents must be"),
    ],
)
def test_bad_inputs_are_named(latents, labels, names, message):
    with pytest.raises(ValueError, match=message):
        compute_directions(latents, labels, names, progress=False)


def _small_directions() -> Directions:
    x, _, _ = _planted(400, 8, seed=7)
    rng = np.random.default_rng(8)
    labels = np.where(x[:, :3] + rng.standard_normal((400, 3)) > 0, 1, -1)
    labels[:, 2] = -1
    return compute_directions(x, labels, ["Smiling", "Young", "Bald"], model_config={"image_size": 8},
                              progress=False)


def test_nullspace_finds_the_second_read_out_then_stops_at_chance():
    """The label is linear in two coordinates; from the first, one round finds the second, and the next round's
    fit is at chance on held-out latents, so the basis stops at two rows."""
    x = np.random.default_rng(0).standard_normal((5000, 12)).astype(np.float32)
    y = x[:, 0] + x[:, 1] > 0
    basis, aucs = nullspace_basis(x[:4000], y[:4000], x[4000:], y[4000:], np.eye(12)[0] * 3.0, DirectionConfig(C=1.0))
    assert basis.shape == (2, 12) and np.allclose(basis @ basis.T, np.eye(2), atol=1e-5)
    assert np.allclose(basis[0], np.eye(12)[0]) and abs(basis[1][1]) > 0.99
    assert len(aucs) == 2 and aucs[0] > 0.8 and aucs[1] < 0.55
    capped, _ = nullspace_basis(x[:4000], y[:4000], x[4000:], y[4000:], np.eye(12)[0],
                                DirectionConfig(C=1.0, nullspace_rounds=0))
    assert capped.shape == (1, 12)


def test_nullspace_stops_when_nothing_is_left_to_find():
    x = np.outer(np.random.default_rng(1).standard_normal(300), np.eye(5)[0]).astype(np.float32)
    basis, aucs = nullspace_basis(x[:200], x[:200, 0] > 0, x[200:], x[200:, 0] > 0, np.eye(5)[0],
                                  DirectionConfig(C=1.0))
    assert basis.shape == (1, 5) and len(aucs) == 1


def test_directions_carry_nullspaces_for_the_configured_attributes_they_can_fit():
    x, _, _ = _planted(400, 8, seed=7)
    labels = np.where(x[:, :3] > 0, 1, -1)
    labels[:, 2] = -1  # Bald: no positives, a fallback, so no basis
    d = compute_directions(x, labels, ["Smiling", "Young", "Bald"], DirectionConfig(nullspace=("Young", "Bald",
                                                                                               "Male")), progress=False)
    assert set(d.nullspaces) == {"Young"}
    basis = d.nullspaces["Young"].double()
    unit = d.vector("Young", "classifier").double() / d.vector("Young", "classifier").double().norm()
    assert torch.allclose(basis[0], unit, atol=1e-6)
    assert torch.allclose(basis @ basis.T, torch.eye(len(basis), dtype=basis.dtype), atol=1e-5)
    assert d.info["Young"]["nullspace"]["rows"] == len(basis) and d.info["Young"]["nullspace"]["auc"]
    # holding an attribute: its basis under NULLSPACE, its classifier normal where it has none, else its vector
    assert torch.equal(d.held("Young", "nullspace"), d.nullspaces["Young"])
    assert torch.equal(d.held("Smiling", "nullspace"), d.vector("Smiling", "classifier")[None])
    assert torch.equal(d.held("Young", "mean_diff"), d.vector("Young", "mean_diff")[None])
    none = compute_directions(x, labels, ["Smiling", "Young", "Bald"], DirectionConfig(nullspace=()), progress=False)
    assert none.nullspaces == {} and "nullspace" not in none.info["Young"]
    with pytest.raises(ValueError, match="nullspace_rounds"):
        DirectionConfig(nullspace_rounds=-1)


def test_save_load_round_trip(tmp_path):
    d = _small_directions()
    assert set(d.nullspaces) == {"Smiling", "Young"}  # the default list, less Male, which the labels lack
    path = tmp_path / "directions.safetensors"
    d.save(path)
    back = load_directions(path)
    assert back.nullspaces.keys() == d.nullspaces.keys()
    assert all(torch.equal(back.nullspaces[k], v) for k, v in d.nullspaces.items())
    d.nullspaces = {}
    d.save(path)
    assert load_directions(path).nullspaces == {}  # a file from before nullspaces
    assert back.names == d.names and back.latent_dim == 8 and back.model_config == {"image_size": 8}
    for m in ("mean_diff", "classifier"):
        assert torch.equal(back.vectors[m], d.vectors[m]) and back.vectors[m].dtype == torch.float32
        assert torch.equal(back.gram[m], d.gram[m])
    assert math.isnan(back.info["Bald"]["classifier"]["auc"])
    assert back.info["Young"] == d.info["Young"]
    assert back.config == d.config
    assert torch.equal(back.vector("Young"), d.vectors["classifier"][1])
    with pytest.raises(KeyError, match="Smiling"):
        back.vector("Smile")
    with pytest.raises(KeyError, match="mean_diff"):
        back.vector("Smiling", "pca")


def test_save_refuses_vectors_that_do_not_fit(tmp_path):
    d = _small_directions()
    d.vectors["classifier"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        d.save(tmp_path / "nan.safetensors")
    d.latent_dim = 9
    with pytest.raises(ValueError, match="do not fit"):
        d.save(tmp_path / "shape.safetensors")
    assert not list(tmp_path.iterdir())


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_directions(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(ValueError, match="not a readable directions file"):
        load_directions(junk)
    good = tmp_path / "good.safetensors"
    _small_directions().save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match="directions file"):
        load_directions(truncated)
    partial = tmp_path / "partial.safetensors"
    save_file({"mean_diff": torch.zeros(1, 4)}, str(partial), metadata={"attributes": '["a"]'})
    with pytest.raises(ValueError, match="missing tensors.*classifier"):
        load_directions(partial)
    wrong = tmp_path / "wrong.safetensors"
    tensors = {"mean_diff": torch.zeros(1, 4), "classifier": torch.zeros(1, 4),
               "gram_mean_diff": torch.zeros(1, 1), "gram_classifier": torch.zeros(1, 1)}
    meta = {"attributes": '["a"]', "info": '{"a": {}}', "latent": "raw", "latent_dim": "4"}
    save_file(tensors, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match="'raw' latents"):
        load_directions(wrong)
    save_file(tensors, str(wrong), metadata={**meta, "latent": "standardized", "latent_dim": "5"})
    with pytest.raises(ValueError, match="expected \\(1, 5\\)"):
        load_directions(wrong)
    meta = {**meta, "latent": "standardized"}
    for basis, name, message in [(torch.ones(2, 4), "a", "orthonormal"), (torch.eye(4)[:2], "b", "not one of"),
                                 (torch.eye(4)[:, :3].contiguous(), "a", "expected \\(k, 4\\)")]:
        save_file({**tensors, f"nullspace_{name}": basis}, str(wrong), metadata=meta)
        with pytest.raises(ValueError, match=message):
            load_directions(wrong)


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory, celeba_dir):
    """300 real faces from ../shared in the CelebA layout, with only their attribute rows (parsed in a blink)."""
    root = tmp_path_factory.mktemp("celeba300")
    (root / "img_align_celeba").mkdir()
    files = sorted((celeba_dir / "img_align_celeba").glob("*.jpg"))[:300]
    for f in files:
        (root / "img_align_celeba" / f.name).symlink_to(f)
    wanted = {f.name for f in files}
    lines = (celeba_dir / "list_attr_celeba.txt").read_text().splitlines()
    rows = [line for line in lines[2:] if line.split(maxsplit=1)[0] in wanted]
    (root / "list_attr_celeba.txt").write_text("\r\n".join([str(len(rows)), lines[1], *rows]) + "\r\n")
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, faces_dir):
    model = Glow(GlowConfig(image_size=16, levels=2, depth=2, hidden=16), seed=0)
    images, _ = load_images(open_dataset(faces_dir, limit=64), 16, workers=0, progress=False)
    model.initialize(images)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    return path


def test_command_end_to_end_on_real_faces(tmp_path, tiny_model_dir, faces_dir, capsys):
    out = tmp_path / "dirs" / "celeba16.safetensors"
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--limit", "280", "--batch-size", "64", "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Smiling" in printed and "mean held-out AUC" in printed
    d = load_directions(out)
    assert set(d.nullspaces) == {"Male", "Young", "Smiling"} and "nullspace of Male: " in printed
    model = Glow.from_pretrained(tiny_model_dir)
    assert len(d.names) == 40 and len(set(d.names)) == 40 and "Smiling" in d.names
    assert d.latent_dim == model.latent_dim == 16 * 16 * 3
    assert d.model_config == model.config.to_dict()
    for m in ("mean_diff", "classifier"):
        assert d.vectors[m].shape == (40, d.latent_dim) and torch.isfinite(d.vectors[m]).all()
        assert d.gram[m].shape == (40, 40)
    assert d.config["val_fraction"] == 0.2 and d.config["C"] == DirectionConfig.C
    images, used = load_images(open_dataset(faces_dir, limit=280), 16, workers=0, progress=False)
    n = len(used)
    fitted = 0
    for name in d.names:
        md, clf = d.info[name]["mean_diff"], d.info[name]["classifier"]
        assert md["n_pos"] + md["n_neg"] == n
        assert clf["n_pos"] + clf["n_neg"] + clf["n_val_pos"] + clf["n_val_neg"] == n
        assert clf["n_val_pos"] + clf["n_val_neg"] == round(0.2 * n)
        for stats in (md, clf):
            assert math.isnan(stats["auc"]) or 0.0 <= stats["auc"] <= 1.0
        fitted += not clf["fallback"]
    assert fitted >= 20  # most CelebA attributes have 10+ of each class in 224 faces

    # the stored mean difference is that of the exact standardised latents of the same crop
    with torch.no_grad():
        flat = model.flatten_latents(model.encode(images, standardized=True)).double()
    smiling = torch.from_numpy(used.labels[:, used.attributes.index("Smiling")] > 0)
    expected = flat[smiling].mean(0) - flat[~smiling].mean(0)
    torch.testing.assert_close(d.vector("Smiling", "mean_diff").double(), expected, atol=1e-4, rtol=1e-4)
    # and its within-gender differences those among the men and among the women, by the borrowing rule
    male = torch.from_numpy(used.labels[:, used.attributes.index("Male")] > 0)
    groups = {"pos": male, "neg": ~male}
    counts = {k: [int((g & smiling).sum()), int((g & ~smiling).sum())] for k, g in groups.items()}
    assert d.info["Smiling"]["within_gender"]["n"] == counts and "within-gender mean differences for" in printed
    enough = [k for k in groups if min(counts[k]) >= DirectionConfig.gender_min_count]
    for k, g in groups.items():
        source = groups[k if k in enough else enough[0]] if enough else None
        want = (flat[source & smiling].mean(0) - flat[source & ~smiling].mean(0)) if enough else expected
        torch.testing.assert_close(d.within_gender[k][d.names.index("Smiling")].double(), want, atol=1e-4,
                                   rtol=1e-4)
    assert (tmp_path / "dirs" / "celeba16_auc.png").stat().st_size > 0
    assert (tmp_path / "dirs" / "celeba16_projections.png").stat().st_size > 0


def test_command_refuses_unlabelled_folders(tmp_path, tiny_model_dir, faces_dir, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    first = sorted((faces_dir / "img_align_celeba").iterdir())[0]
    (folder / first.name).write_bytes(first.read_bytes())
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(folder), "--out",
               str(tmp_path / "d.safetensors"), "--device", "cpu", "--no-progress"])
    assert rc == 2
    assert "no attribute labels" in capsys.readouterr().err
    assert not (tmp_path / "d.safetensors").exists()


def test_command_fits_only_the_training_faces_of_a_split(tmp_path, tiny_model_dir, faces_dir, capsys):
    names = open_dataset(faces_dir, limit=120).names()
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": names[:100], "val": names[100:]}))
    out = tmp_path / "d.safetensors"
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--split", str(split), "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    info = load_directions(out).info["Smiling"]["mean_diff"]
    assert info["n_pos"] + info["n_neg"] == 100  # not the 240 faces of the folder, nor the 20 held out
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--split", str(split), "--nullspace", "Smiling", "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0 and set(load_directions(out).nullspaces) == {"Smiling"}
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--nullspace", "Smiles", "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 2 and "names attributes the labels do not have: ['Smiles']" in capsys.readouterr().err
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--gender", "Hat", "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 2 and "--gender names attributes the labels do not have: ['Hat']" in capsys.readouterr().err
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--split", str(split), "--gender", "none", "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0 and load_directions(out).methods == ("mean_diff", "classifier")
    split.write_text("[]")
    rc = main(["directions", "--model", str(tiny_model_dir), "--data", str(faces_dir), "--out", str(out),
               "--split", str(split), "--workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 2 and "cannot read a 'train' list" in capsys.readouterr().err


def _gendered(n_men: int = 200, n_women: int = 300, seed: int = 0):
    """Coordinate 0 is gender (+1 men, -1 women) plus noise, coordinate 1 the attribute (+1 with it, 0 without):
    a quarter of the men and two thirds of the women have it, so the pooled mean difference carries a gender gap
    that the difference within either gender does not. Coordinate 2 is a beard only men have."""
    rng = np.random.default_rng(seed)
    male = np.arange(n_men + n_women) < n_men
    has = np.where(male, rng.random(len(male)) < 0.25, rng.random(len(male)) < 2 / 3)
    beard = male & (rng.random(len(male)) < 0.3)
    x = np.stack([np.where(male, 1.0, -1.0) + 0.3 * rng.standard_normal(len(male)), has, beard,
                  rng.standard_normal(len(male))], 1).astype(np.float32)
    labels = np.where(np.stack([male, has, beard], 1), 1, -1)
    return x, labels, male, has


def test_within_gender_differences_carry_no_gender_gap_and_borrow_where_a_gender_lacks_faces():
    x, labels, male, has = _gendered()
    d = compute_directions(x, labels, ["Male", "Blond_Hair", "No_Beard"], DirectionConfig(gender_min_count=10),
                           progress=False)
    assert d.methods == ("mean_diff", "classifier", "within_gender")
    j = 1
    for key, rows in (("pos", male), ("neg", ~male)):
        want = x[rows & has].mean(0) - x[rows & ~has].mean(0)  # exactly 1 along the attribute, noise along gender
        assert np.allclose(d.within_gender[key][j].numpy(), want, atol=1e-5)
        assert abs(want[0]) < 0.15 and want[1] == pytest.approx(1.0)
    assert d.vector("Blond_Hair", "mean_diff")[0] < -0.5  # the pooled difference: more women with it
    assert d.info["Blond_Hair"]["within_gender"]["n"]["pos"] == [int((male & has).sum()), int((male & ~has).sum())]
    # a beard only men have: women borrow the men's difference; Male itself is the plain mean difference
    beard = d.info["No_Beard"]["within_gender"]
    assert beard["borrowed"] == ["neg"] and not beard["fallback"]
    assert torch.equal(d.within_gender["neg"][2], d.within_gender["pos"][2])
    assert d.info["Male"]["within_gender"]["fallback"]
    assert torch.equal(d.within_gender["pos"][0], d.vector("Male", "mean_diff"))
    assert d.methods_for("Male") == ("mean_diff", "classifier")
    assert "within_gender" in d.methods_for("Blond_Hair")
    assert d.gender_reader["attribute"] == "Male" and d.gender_reader["accuracy"] > 0.99
    none = compute_directions(x, labels, ["Male", "Blond_Hair", "No_Beard"], DirectionConfig(gender=None),
                              progress=False)
    assert none.within_gender == {} and none.methods == ("mean_diff", "classifier")
    with pytest.raises(ValueError, match="gender_min_count"):
        DirectionConfig(gender_min_count=0)


def test_a_within_gender_vector_follows_the_faces_own_gender():
    x, labels, male, _ = _gendered()
    d = compute_directions(x, labels, ["Male", "Blond_Hair", "No_Beard"], progress=False)
    man, woman = torch.tensor([3.0, 0, 0, 0]), torch.tensor([-3.0, 0, 0, 0])
    assert d.p_gender(man) > 0.99 and d.p_gender(woman) < 0.01
    assert torch.allclose(d.vector("Blond_Hair", "within_gender", man), d.within_gender["pos"][1], atol=1e-2)
    both = d.vector("Blond_Hair", "within_gender", torch.stack([man, woman, torch.zeros(4)]))
    p = d.p_gender(torch.zeros(4))
    assert both.shape == (3, 4) and torch.allclose(both[1], d.within_gender["neg"][1], atol=1e-2)
    assert torch.allclose(both[2], p * d.within_gender["pos"][1] + (1 - p) * d.within_gender["neg"][1])
    with pytest.raises(ValueError, match="depends on the face"):
        d.vector("Blond_Hair", "within_gender")


def test_within_gender_round_trips_and_a_file_without_it_says_how_to_get_it(tmp_path):
    x, labels, _, _ = _gendered()
    d = compute_directions(x, labels, ["Male", "Blond_Hair", "No_Beard"], progress=False)
    path = tmp_path / "d.safetensors"
    d.save(path)
    back = load_directions(path)
    assert all(torch.equal(back.within_gender[k], v) for k, v in d.within_gender.items())
    assert back.gender_reader == d.gender_reader and back.methods == d.methods
    old = _small_directions()
    old.save(path)
    with pytest.raises(KeyError, match="no within-gender differences: refit it"):
        load_directions(path).vector("Smiling", "within_gender", torch.zeros(8))
    d.gender_reader = {"attribute": "Hat", "coef": 1.0, "intercept": 0.0}
    with pytest.raises(ValueError, match="gender reader must name one of the attributes"):
        d.save(tmp_path / "bad.safetensors")
    d.gender_reader = back.gender_reader
    d.within_gender = {"pos": d.within_gender["pos"]}
    with pytest.raises(ValueError, match="'pos' and 'neg'"):
        d.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_load_names_broken_within_gender_parts(tmp_path):
    x, labels, _, _ = _gendered()
    d = compute_directions(x, labels, ["Male", "Blond_Hair", "No_Beard"], progress=False)
    good = tmp_path / "good.safetensors"
    d.save(good)
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(good))
    bad = tmp_path / "bad.safetensors"
    save_file({**tensors, "within_gender_neg": torch.full((3, 4), float("nan"))}, str(bad), metadata=meta)
    with pytest.raises(ValueError, match="non-finite"):
        load_directions(bad)
    save_file(tensors, str(bad), metadata={k: v for k, v in meta.items() if k != "gender_reader"})
    with pytest.raises(ValueError, match="gender reader"):
        load_directions(bad)
