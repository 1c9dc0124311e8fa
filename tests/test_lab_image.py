"""Tests of the lab image recipe, its cache, and the contents of the built image."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from podium.lab.image import ImageRecipe, build_rootfs, debootstrap_command, image_path
from tests.fixtures_lab import lab_image

__all__ = ["lab_image"]


def test_recipe_hash_is_stable_and_follows_every_field() -> None:
    recipe = ImageRecipe()
    assert recipe.digest() == ImageRecipe().digest()
    variants = [
        dataclasses.replace(recipe, suite="trixie"),
        dataclasses.replace(recipe, mirror="http://mirror.example/debian"),
        dataclasses.replace(recipe, packages=(*recipe.packages, "vim")),
        dataclasses.replace(recipe, setup=recipe.setup + "true\n"),
    ]
    digests = {recipe.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 5


def test_debootstrap_includes_what_roles_and_testinfra_need() -> None:
    command = debootstrap_command(ImageRecipe(), Path("/tmp/target"))
    include = next(arg for arg in command if arg.startswith("--include="))
    for package in ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "sudo"):
        assert package in include.removeprefix("--include=").split(","), package
    assert command[-3:] == ["bookworm", "/tmp/target", "http://deb.debian.org/debian"]


def test_a_cached_image_is_returned_without_building(tmp_path: Path) -> None:
    cached = image_path(tmp_path)
    cached.mkdir(parents=True)
    assert build_rootfs(cache_dir=tmp_path) == cached
    assert list(tmp_path.iterdir()) == [cached]


@pytest.mark.lab
def test_image_lets_root_in_by_key_only_and_carries_no_host_keys(lab_image: Path) -> None:
    sshd = (lab_image / "etc/ssh/sshd_config.d/podium.conf").read_text()
    assert "PermitRootLogin prohibit-password" in sshd
    assert "PasswordAuthentication no" in sshd
    assert list((lab_image / "etc/ssh").glob("ssh_host_*")) == []
    assert (lab_image / "etc/machine-id").read_text() == ""
    assert (lab_image / "usr/bin/python3").exists()
    assert (lab_image / "lib/systemd/systemd").exists()
    recorded = json.loads((lab_image / "etc/podium-image.json").read_text())
    assert recorded == json.loads(json.dumps(dataclasses.asdict(ImageRecipe())))
