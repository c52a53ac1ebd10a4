"""CIFAR python batch files (written here in the real format, tiny) become a train/val image folder."""

import pickle

import numpy as np
import pytest

import headstart
from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.data.layouts import list_images
from tests.conftest import CLASS_COLOURS, tiny_recipe

NAMES = list(CLASS_COLOURS)  # red, green, blue


def colour_rows(count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Rows of 3072 bytes (red plane, green plane, blue plane), as CIFAR stores them."""
    rng = np.random.default_rng(seed)
    labels = [i % len(NAMES) for i in range(count)]
    images = np.stack(
        [np.clip(np.array(CLASS_COLOURS[NAMES[y]]) + rng.normal(0, 20, (32, 32, 3)), 0, 255) for y in labels]
    )
    return images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(count, 3072), labels


def write_batch(path, count, seed):
    data, labels = colour_rows(count, seed)
    batch = {
        b"batch_label": b"tiny",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(count)],
    }
    with open(path, "wb") as stream:
        pickle.dump(batch, stream, protocol=2)


@pytest.fixture
def cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    write_batch(folder / "data_batch_1", 30, seed=1)
    write_batch(folder / "data_batch_2", 30, seed=2)
    write_batch(folder / "test_batch", 15, seed=3)
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, stream, protocol=2)
    return folder


def test_cifar_batches_become_a_train_val_folder_with_exact_pixels(cifar10_batches):
    split = list_images(DataConfig(path=str(cifar10_batches)))
    assert split.name == "cifar10" and split.classes == sorted(NAMES)
    assert len(split.train) == 60 and len(split.val) == 15
    from PIL import Image

    data, labels = colour_rows(30, seed=1)
    first = next(path for path, _ in split.train if path.name == "img_1_0.png")
    assert np.array_equal(np.asarray(Image.open(first)), data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert first.parent.name == NAMES[labels[0]]
    assert list_images(DataConfig(path=str(cifar10_batches))).train[0][0] == split.train[0][0]  # written once, reused


def test_training_on_cifar_batches_learns(cifar10_batches, tmp_path):
    result = headstart.train(tiny_recipe(cifar10_batches, tmp_path / "runs"), quiet=True)
    assert result.final["val_acc"] >= 0.8


def test_cifar_pickle_that_would_run_code_is_refused(cifar10_batches):
    class Exploit:
        def __reduce__(self):
            return (print, ("this ran",))

    with open(cifar10_batches / "batches.meta", "wb") as stream:
        pickle.dump({b"label_names": Exploit()}, stream)
    with pytest.raises(HeadstartError, match="refusing to load builtins.print"):
        list_images(DataConfig(path=str(cifar10_batches)))


def test_offline_download_says_what_to_do(monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    with pytest.raises(HeadstartError, match="could not be downloaded .*cifar-10-python.tar.gz.*cifar-10-batches-py"):
        list_images(DataConfig(path="cifar10"))
