"""The instrument's training: balancing weights that make a head's label independent of the edited attributes."""
import json

import numpy as np
import pytest
import torch

from app.cli import main
from app.classifier import (AttributeClassifier, Balance, ClassifierConfig, ClassifierEnsemble, TrainSettings,
                            balancing_weights, load_instrument, train_classifier)

NAMES = ["Male", "Eyeglasses", "Blond_Hair", "Bald", "Smiling"]


def _confounded_labels(n: int = 6000, seed: int = 0) -> np.ndarray:
    """+1/-1 labels where glasses go mostly with men and blond hair with women, as in CelebA, and baldness is
    (almost) only men's."""
    rng = np.random.default_rng(seed)
    male = rng.random(n) < 0.4
    glasses = rng.random(n) < np.where(male, 0.15, 0.03)
    blond = rng.random(n) < np.where(male, 0.03, 0.25)
    bald = male & (rng.random(n) < 0.05)
    bald[np.flatnonzero(~male)[:3]] = True
    smiling = rng.random(n) < 0.5
    return np.where(np.stack([male, glasses, blond, bald, smiling], 1), 1, -1)


def _weighted_share(y, on, w):
    return np.average(y[on], weights=w[on]), np.average(y[~on], weights=w[~on])


def test_weights_make_the_head_independent_of_each_edited_attribute():
    labels = _confounded_labels()
    y = labels > 0
    male = y[:, 0]
    assert male[y[:, 1]].mean() - male[~y[:, 1]].mean() > 0.3  # the confound the weights must remove
    weights, info = balancing_weights(labels, NAMES, Balance(("Male",), ("Eyeglasses", "Blond_Hair", "Smiling"),
                                                             min_cell=50))
    w = weights[:, 0].astype(float)
    for j in (1, 2, 4):
        with_it, without = _weighted_share(male, y[:, j], w)
        assert abs(with_it - without) < 2e-3, NAMES[j]
    assert np.allclose(weights[:, 1:], 1)  # the other heads learn from every face as before
    assert w.mean() == pytest.approx(1, abs=1e-5) and w.min() > 0
    assert info["Male"]["largest_gap"] < 2e-3 and 0.3 < info["Male"]["effective_share"] < 1
    assert info["Male"]["against"] == ["Eyeglasses", "Blond_Hair", "Smiling"] and info["Male"]["skipped"] == {}


def test_a_pair_too_rare_together_is_left_out_and_the_weights_stay_clipped():
    labels = _confounded_labels()
    weights, info = balancing_weights(labels, NAMES, Balance(("Male",), ("Bald", "Eyeglasses"), clip=4.0,
                                                             min_cell=50))
    assert info["Male"]["against"] == ["Eyeglasses"]
    assert info["Male"]["skipped"] == {"Bald": "a cell of 3 faces"}
    w = weights[:, 0]
    assert w.max() / w.min() <= 16 + 1e-4  # each weight in [1/4, 4] before the common rescaling
    y = labels > 0
    with_it, without = _weighted_share(y[:, 0], y[:, 1], w.astype(float))
    assert abs(with_it - without) < 2e-3


def test_bad_balance_settings_and_weights_are_named():
    labels = _confounded_labels(200)
    with pytest.raises(ValueError, match="Wavy_Hair"):
        balancing_weights(labels, NAMES, Balance(("Male",), ("Wavy_Hair",)))
    with pytest.raises(ValueError, match="clip"):
        Balance(("Male",), (), clip=1.0)
    config = ClassifierConfig(NAMES, image_size=16, widths=[4, 8])
    images = torch.zeros(200, 3, 16, 16, dtype=torch.uint8)
    for bad in (np.ones((200, 2)), -np.ones(labels.shape), np.full(labels.shape, np.nan)):
        with pytest.raises(ValueError, match="loss weights"):
            train_classifier(images, labels, config, TrainSettings(epochs=1), weights=bad)


def test_zero_weights_leave_a_head_untrained():
    """The weights reach the loss: a head whose every face weighs 0 gets no gradient (weight decay aside)."""
    labels = _confounded_labels(256)
    config = ClassifierConfig(NAMES, image_size=16, widths=[4, 8], dropout=0.0)
    images = torch.randint(0, 256, (256, 3, 16, 16), dtype=torch.uint8)
    weights = np.ones(labels.shape, dtype=np.float32)
    weights[:, 1] = 0
    settings = TrainSettings(epochs=1, batch_size=64, weight_decay=0.0)
    torch.manual_seed(settings.seed)
    initial = AttributeClassifier(config).head.bias.detach().clone()
    model, _ = train_classifier(images, labels, config, settings, weights=weights)
    moved = (model.head.bias.detach() - initial).abs()
    assert moved[1] == 0 and (moved[[0, 2, 3, 4]] > 0).all()


def test_command_balances_the_leak_heads_on_request_and_says_so(tmp_path, faces_dir, capsys):
    split = tmp_path / "split.json"
    names = sorted(f"img_align_celeba/{p.name}" for p in (faces_dir / "img_align_celeba").glob("*.jpg"))
    split.write_text(json.dumps({"val": names[:40]}))
    out = tmp_path / "clf"
    args = ["train-classifier", "--data", str(faces_dir), "--split", str(split), "--out", str(out), "--epochs", "1",
            "--widths", "4,8", "--image-size", "16"]
    assert main([*args, "--balance", "leak", "--balance-against", "Eyeglasses,Smiling"]) == 0
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert set(metrics["balance"]["heads_info"]) == {"Male", "Young", "Smiling"}
    male = metrics["balance"]["heads_info"]["Male"]
    assert {*male["against"], *male["skipped"]} == {"Eyeglasses", "Smiling"}  # 200 faces: small cells are left out
    assert "Male reads apart from the edited attributes" in (out / "CARD.md").read_text()
    assert "Male balanced against" in capsys.readouterr().out
    assert main(args) == 0  # by default nothing is balanced, as for the shipped instrument
    assert json.loads((out / "config.json").read_text())["metrics"]["balance"]["heads_info"] == {}
    assert "reads apart" not in (out / "CARD.md").read_text()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "not_written"), "--balance", "Not_An_Attribute"]) != 0
    assert "Not_An_Attribute" in capsys.readouterr().err and not (tmp_path / "not_written").exists()


def _net(attributes: list[str], seed: int) -> AttributeClassifier:
    torch.manual_seed(seed)
    net = AttributeClassifier(ClassifierConfig(attributes, image_size=16, widths=[4, 8]))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


def test_an_ensemble_reads_its_members_mean_and_round_trips(tmp_path):
    members = [_net(["Male", "Young"], s) for s in (0, 1, 2)]
    ensemble = ClassifierEnsemble(members)
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    probs, features = ensemble.predict(x)
    each = [m.predict(x) for m in members]
    assert torch.allclose(probs, sum(p for p, _ in each) / 3) and torch.equal(features, each[0][1])
    assert not torch.allclose(each[0][0], each[1][0])  # the members differ, so the mean is not any one of them
    ensemble.save_pretrained(tmp_path, {"validation": {}})
    back = load_instrument(tmp_path)
    assert isinstance(back, ClassifierEnsemble) and back.attributes == ["Male", "Young"]
    assert torch.allclose(back.predict(x)[0], probs)
    alone = load_instrument(tmp_path / "member_1")  # each member is a classifier folder of its own
    assert isinstance(alone, AttributeClassifier) and torch.allclose(alone.predict(x)[0], each[1][0])
    assert not list(tmp_path.rglob("*.pt*")) and not list(tmp_path.rglob("*.bin"))


def test_bad_ensembles_are_named(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        ClassifierEnsemble([_net(["Male"], 0)])
    with pytest.raises(ValueError, match=r"members \[1\]"):
        ClassifierEnsemble([_net(["Male"], 0), _net(["Young"], 1)])
    ClassifierEnsemble([_net(["Male"], 0), _net(["Male"], 1)]).save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    doc = json.loads(config.read_text())
    for members in (["member_0", "../elsewhere"], "member_0", []):
        config.write_text(json.dumps({**doc, "members": members}))
        with pytest.raises(ValueError, match="config.json"):
            load_instrument(tmp_path)
    config.write_text(json.dumps({**doc, "members": ["member_0", "member_7"]}))
    with pytest.raises(FileNotFoundError, match="member_7"):
        load_instrument(tmp_path)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_instrument(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_instrument(tmp_path / "missing")


def test_command_trains_an_ensemble_of_seeds(tmp_path, faces_dir, capsys):
    split = tmp_path / "split.json"
    names = sorted(f"img_align_celeba/{p.name}" for p in (faces_dir / "img_align_celeba").glob("*.jpg"))
    split.write_text(json.dumps({"val": names[:40]}))
    out = tmp_path / "ensemble"
    assert main(["train-classifier", "--data", str(faces_dir), "--split", str(split), "--out", str(out), "--epochs",
                 "1", "--widths", "4,8", "--image-size", "16", "--members", "2", "--seed", "3"]) == 0
    instrument = load_instrument(out)
    assert isinstance(instrument, ClassifierEnsemble) and len(instrument.members) == 2
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert [m["seed"] for m in metrics["members"]] == [3, 4] and len(metrics["validation"]) == 40
    assert "An ensemble of 2" in (out / "CARD.md").read_text()
    assert "2 members' mean probability" in capsys.readouterr().out


def test_the_editor_finds_an_ensemble_beside_the_model_and_a_net_inside_it_first(tmp_path):
    from app.service import CLASSIFIER_DIR, EditorService
    from tests.conftest import nontrivial_model, tiny_config

    nontrivial_model(tiny_config()).save_pretrained(tmp_path / "model")
    ClassifierEnsemble([_net(["Male"], 0), _net(["Male"], 1)]).save_pretrained(tmp_path / CLASSIFIER_DIR)
    assert isinstance(EditorService.load(tmp_path / "model", align=False).classifier, ClassifierEnsemble)
    _net(["Young"], 2).save_pretrained(tmp_path / "model" / CLASSIFIER_DIR)
    inside = EditorService.load(tmp_path / "model", align=False).classifier
    assert isinstance(inside, AttributeClassifier) and inside.attributes == ["Young"]
    (tmp_path / "model" / CLASSIFIER_DIR / "model.safetensors").write_bytes(b"broken")
    assert EditorService.load(tmp_path / "model", align=False).classifier is None  # the editor works without it


def test_the_editor_reads_the_unedited_face_once_per_classifier():
    from app.classifier import describe_change
    from app.service import EditorService
    from tests.conftest import nontrivial_model, tiny_config
    from tests.editor_support import random_directions

    model = nontrivial_model(tiny_config(image_size=16))
    service = EditorService(model, random_directions(["Smiling", "Male"], model.latent_dim), display_size=16)
    face = service.encode(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    first, second = (ClassifierEnsemble([_net(["Smiling", "Male"], s), _net(["Smiling", "Male"], s + 1)])
                     for s in (0, 5))
    sizes = []
    for instrument in (first, second):
        instrument.predict = _counting(instrument.predict, sizes)
    edited = service.edit(face, {"Smiling": 1.0})
    for instrument in (first, second, first):
        service.classifier = instrument
        sizes.clear()
        text = service.reading(face, edited, {"Smiling": 1.0})
        again = service.reading(face, edited, {"Smiling": -1.0})
        assert sizes == [1, 1, 1]  # the face once for this classifier, then only the edits
        assert text == describe_change(instrument, face.image, edited.image, {"Smiling": 1.0})["text"]
        assert again == describe_change(instrument, face.image, edited.image, {"Smiling": -1.0})["text"]


def _counting(predict, sizes: list[int]):
    def wrapped(images, *args, **kwargs):
        sizes.append(len(images))
        return predict(images, *args, **kwargs)
    return wrapped
