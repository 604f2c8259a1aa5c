"""A Secret volume as the kubelet writes it (pkg/volume/util/atomic_writer.go): the data in
a timestamped directory, `..data` linked to it last, each key a link through `..data`."""

import os

from kopfvirt.clients import kubelet


def kubelet_writes(volume, data: dict[str, str]) -> None:
    stamp = volume / "..2026_11_29_03_41_07.1234567890"
    stamp.mkdir(parents=True)
    for key, value in data.items():
        (stamp / key).write_text(value)
    os.symlink(stamp.name, volume / "..data_tmp")
    os.rename(volume / "..data_tmp", volume / "..data")
    for key in data:
        os.symlink(f"..data/{key}", volume / key)


def test_the_keys_a_cloud_init_disk_takes_are_read_through_the_kubelets_links(tmp_path):
    kubelet_writes(tmp_path, {"userdata": "#cloud-config\nhostname: web\n", "other": "not asked for"})
    assert kubelet.secret_volume(tmp_path, ("userdata", "networkdata")) == {"userdata": "#cloud-config\nhostname: web\n"}


def test_a_volume_the_kubelet_has_not_filled_is_none(tmp_path):
    assert kubelet.secret_volume(tmp_path, ("userdata",)) is None          # the directory, nothing in it yet
    assert kubelet.secret_volume(tmp_path / "absent", ("userdata",)) is None
