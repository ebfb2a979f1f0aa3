"""The option table: every mount option reaches MountConfig the same way from the command line
and from fstab, with the same default, and README.md lists it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ngffmount.vfs.command.cli import build_parser, main
from ngffmount.vfs.command.mount import MountConfig
from ngffmount.vfs.command.options import (
    OPTIONS, config_from_args, parse_age, parse_option, parse_size, parse_transport, storage_options_of,
)
from ngffmount.vfs.command.service import helper_arguments

README = Path(__file__).resolve().parent.parent / "README.md"
# A value to give each kind of option, and what it becomes in MountConfig.
SAMPLES = {parse_size: ("2G", 2 << 30), parse_age: ("1h", 3600.0), int: ("7", 7), float: ("2.5", 2.5),
           str: ("/x/y", "/x/y"), parse_option: ("region=eu", {"region": "eu"}),
           parse_transport: ("obstore", "obstore")}


def mount_config(argv: list[str]):
    return config_from_args(build_parser().parse_args(argv))


def test_every_option_has_one_field_in_mount_config():
    fields = [f.name for f in dataclasses.fields(MountConfig)]
    assert fields == ["source", "mountpoint", *(o.name for o in OPTIONS)]
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)
    fstab_names = [o.fstab for o in OPTIONS if o.fstab is not None]
    assert len(set(fstab_names)) == len(fstab_names)


def test_defaults_agree_between_cli_and_mount_config():
    from_cli = mount_config(["mount", "src", "mnt"])
    assert from_cli == MountConfig("src", "mnt")
    for o in OPTIONS:
        assert getattr(from_cli, o.name) == o.default_value(), o.name


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_option_from_cli_and_from_fstab_lands_in_mount_config(option):
    if option.switch:
        cli, fstab, expected = [option.flag], option.fstab, not option.default
    else:
        text, expected = SAMPLES[option.parse]
        cli = [option.flag, text]
        fstab = f"{option.fstab}region=eu" if option.pairs else f"{option.fstab}={text}"
    from_cli = mount_config(["mount", "src", "mnt", *cli])
    assert getattr(from_cli, option.name) == expected != option.default_value()
    if option.fstab is not None:  # a command-line-only option has no fstab name
        args = helper_arguments(["src", "mnt", "-o", f"ro,_netdev,{fstab}"])
        assert args == ["mount", "src", "mnt", *cli]
        assert mount_config(args) == from_cli
    # The serving child gets the configuration as JSON on stdin and rebuilds it.
    assert MountConfig(**dataclasses.asdict(from_cli)) == from_cli


@pytest.mark.parametrize("opt", ["bogus", "bogus=1", "anon=1", "cache_size", "no_disk_cache=yes", "so.", "so.key",
                                 "storage_options=x", "no-disk-cache", "disk_cache"])
def test_unknown_fstab_option_fails_naming_it(opt):
    key = opt.partition("=")[0]
    with pytest.raises(ValueError, match=f"unknown mount option '{re.escape(key)}"):
        helper_arguments(["src", "mnt", "-o", f"ro,{opt}"])


def test_fstab_error_does_not_repeat_a_misplaced_secret():
    with pytest.raises(ValueError) as exc:
        helper_arguments(["src", "mnt", "-o", "ro,secret_key=TOPSECRET"])
    assert "secret_key" in str(exc.value) and "TOPSECRET" not in str(exc.value)


def test_bad_secret_option_value_is_not_printed(capsys):
    with pytest.raises(SystemExit):
        main(["mount", "src", "mnt", "--storage-option", "TOPSECRET"])
    err = capsys.readouterr().err
    assert "--storage-option" in err and "TOPSECRET" not in err


def test_storage_options_are_built_from_mount_config():
    config = mount_config(["mount", "s3://b/i.zarr", "mnt", "--anon", "--endpoint-url", "http://h:9000",
                           "--storage-option", "region=eu", "--timeout", "8", "--retries", "2", "--concurrency", "12"])
    options = storage_options_of(config)
    assert (options.timeout, options.retries) == (8.0, 2)
    assert options["anon"] is True and options["region"] == "eu"
    assert options["client_kwargs"] == {"endpoint_url": "http://h:9000"}
    assert options["config_kwargs"]["max_pool_connections"] == 24


def test_readme_lists_every_option():
    text = README.read_text()
    table = text.split("## `ngffmount mount` options", 1)[1].split("\n## ", 1)[0]
    fstab = text.split("The ngffmount options are", 1)[1].split("\n\n", 1)[0]
    for o in OPTIONS:
        assert f"`{o.flag}" in table, f"{o.flag} is missing from README's options table"
        if o.fstab is None:
            continue
        form = f"{o.fstab}KEY=VALUE" if o.pairs else o.fstab + ("" if o.switch else "=")
        assert f"`{form}`" in fstab, f"{form} is missing from README's fstab options"
    assert set(re.findall(r"`(--[a-z-]+)", table)) == {"--foreground", *(o.flag for o in OPTIONS)}
