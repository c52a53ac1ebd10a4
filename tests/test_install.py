"""Install hints name the pip command that works for the way headstart was installed."""

import builtins
import json
from importlib import metadata

import pytest

from headstart.core import install
from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.deploy import format_onnx


class FakeDistribution:
    def __init__(self, direct_url):
        self.text = None if direct_url is None else json.dumps(direct_url)

    def read_text(self, name):
        return self.text if name == "direct_url.json" else None


def installed_as(monkeypatch, direct_url):
    monkeypatch.setattr(install.metadata, "distribution", lambda name: FakeDistribution(direct_url))


def test_an_editable_clone_gets_pip_install_e_of_that_clone(monkeypatch, tmp_path):
    installed_as(monkeypatch, {"url": tmp_path.as_uri(), "dir_info": {"editable": True}})
    assert install_hint("export") == f'pip install -e "{tmp_path}[export]"'


def test_a_local_folder_install_names_that_folder(monkeypatch, tmp_path):
    installed_as(monkeypatch, {"url": tmp_path.as_uri(), "dir_info": {}})
    assert install_hint("serve") == f'pip install "{tmp_path}[serve]"'


@pytest.mark.parametrize(
    "direct_url",
    [None, {"url": "https://files.example/headstart.whl", "archive_info": {}}, {"url": "file:///gone", "dir_info": {}}],
)
def test_a_wheel_an_index_or_a_vanished_clone_gets_the_package_name(monkeypatch, direct_url):
    installed_as(monkeypatch, direct_url)
    assert install_hint("export") == "pip install 'headstart[export]'"


def test_not_installed_at_all_gets_the_package_name(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(install.metadata, "distribution", missing)
    assert install_hint("track") == "pip install 'headstart[track]'"


def test_a_missing_extra_error_carries_the_hint(monkeypatch, tmp_path):
    installed_as(monkeypatch, {"url": tmp_path.as_uri(), "dir_info": {"editable": True}})
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(HeadstartError, match=r'pip install -e ".*\[export\]"'):
        format_onnx.load(tmp_path / "model.onnx")
