"""The Maildir mailbox plugin, loaded the way the bridge loads any mailbox plugin."""

import asyncio
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_bridge import plugin
from sdk_bridge.plugin import mutf7
from sdk_bridge_plugins.maildir import Maildir

MAIL = "From: a@example.se\r\nSubject: Hej\r\n\r\nÅ ä ö\r\n".encode()


def files(directory: Path, sub: str) -> list[Path]:
    return sorted((directory / sub).iterdir())


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
        ("Ärenden", "&AMQ-renden"),
        ("Bygg & miljö", "Bygg &- milj&APY-"),
        ("åäö", "&AOUA5AD2-"),
    ],
)
def test_modified_utf7(name: str, encoded: str) -> None:
    assert mutf7.encode(name) == encoded


def test_delivers_whole_message_into_new(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    box = plugin.load(plugin.MAILBOXES, "maildir", {"path": str(root)})
    asyncio.run(box.deliver("1b2c@sdk.example.se", MAIL))
    [delivered] = files(root, "new")
    assert delivered.read_bytes() == MAIL
    assert files(root, "tmp") == [] and files(root, "cur") == []
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert ":" not in delivered.name and "/" not in delivered.name


def test_repeated_delivery_is_a_no_op_even_after_the_reader_moved_it(tmp_path: Path) -> None:
    box = Maildir({"path": str(tmp_path)})
    asyncio.run(box.deliver("same@sdk.example.se", MAIL))
    [first] = files(tmp_path, "new")
    asyncio.run(box.deliver("same@sdk.example.se", MAIL))
    assert files(tmp_path, "new") == [first]
    first.rename(tmp_path / "cur" / f"{first.name}:2,S")  # what an IMAP server does once read
    asyncio.run(box.deliver("same@sdk.example.se", MAIL))
    assert files(tmp_path, "new") == [] and len(files(tmp_path, "cur")) == 1
    asyncio.run(box.deliver("other@sdk.example.se", MAIL))
    assert len(files(tmp_path, "new")) == 1


def test_half_written_copy_from_a_crash_is_replaced(tmp_path: Path) -> None:
    box = Maildir({"path": str(tmp_path)})
    asyncio.run(box.deliver("crash@sdk.example.se", MAIL))
    [done] = files(tmp_path, "new")
    # Simulate a crash before the rename: only a truncated file in tmp/.
    crashed = tmp_path / "tmp" / done.name
    done.rename(crashed)
    crashed.write_bytes(MAIL[:7])
    asyncio.run(box.deliver("crash@sdk.example.se", MAIL))
    assert files(tmp_path, "tmp") == []
    assert [p.read_bytes() for p in files(tmp_path, "new")] == [MAIL]


def test_folder_is_a_maildirplusplus_subfolder(tmp_path: Path) -> None:
    box = Maildir({"path": str(tmp_path), "folder": "Ärenden/Inkommande"})
    asyncio.run(box.deliver("x@sdk.example.se", MAIL))
    folder = tmp_path / ".&AMQ-renden.Inkommande"
    assert (folder / "maildirfolder").is_file()
    assert [p.read_bytes() for p in files(folder, "new")] == [MAIL]
    assert files(tmp_path, "new") == []  # the inbox itself exists and stays empty


def test_many_messages_at_once(tmp_path: Path) -> None:
    box = Maildir({"path": str(tmp_path)})

    async def all_of_them() -> None:
        await asyncio.gather(*(box.deliver(f"{i}@sdk.example.se", MAIL) for i in range(40)))

    asyncio.run(all_of_them())
    assert len(files(tmp_path, "new")) == 40


def test_unwritable_maildir_is_a_temporary_failure(tmp_path: Path) -> None:
    box = Maildir({"path": str(tmp_path / "box")})
    asyncio.run(box.deliver("first@sdk.example.se", MAIL))
    broken = tmp_path / "box" / "tmp"
    broken.rmdir()
    broken.write_bytes(b"")  # a file where tmp/ should be: fails even for root
    with pytest.raises(plugin.TemporaryFailure, match="cannot write into"):
        asyncio.run(box.deliver("second@sdk.example.se", MAIL))
    broken.unlink()
    broken.mkdir()
    asyncio.run(box.deliver("second@sdk.example.se", MAIL))  # the retry succeeds
    assert len(files(tmp_path / "box", "new")) == 2


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({}, "`path` must name"),
        ({"path": "/x", "colour": "blue"}, "unknown setting"),
        ({"path": "/x", "folder": "a.b"}, "without '.'"),
        ({"path": "/x", "folder": "a//b"}, "non-empty"),
        ({"path": "/x", "folder": 7}, "must be text"),
    ],
)
def test_bad_settings_are_named(settings: dict[str, object], error: str) -> None:
    with pytest.raises(plugin.PluginError, match=error):
        plugin.load(plugin.MAILBOXES, "maildir", settings)


def test_a_big_mailbox_is_listed_again_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mailbox of many messages is not listed for every delivery: new/ and cur/ are read
    again only when their mtime says a reader (or a restarted bridge) changed them."""
    box = Maildir({"path": str(tmp_path)})
    asyncio.run(box.deliver("first@sdk.example.se", MAIL))
    for number in range(200):  # what users already have
        (tmp_path / "cur" / f"1700000000.M{number}P1.host:2,S").write_bytes(MAIL)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        listed.append(Path(str(path)).name)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    for number in range(10):
        asyncio.run(box.deliver(f"burst-{number}@sdk.example.se", MAIL))
    assert listed.count("cur") == 1 and listed.count("new") <= 1
    key = hashlib.sha256(b"burst-0@sdk.example.se").hexdigest()[:40]
    [moved] = [path for path in files(tmp_path, "new") if f".{key}." in path.name]
    moved.rename(tmp_path / "cur" / f"{moved.name}:2,S")  # a reader took it
    asyncio.run(box.deliver("burst-0@sdk.example.se", MAIL))  # found in cur/: no copy
    asyncio.run(box.deliver("first@sdk.example.se", MAIL))  # in new/: no copy
    assert len(files(tmp_path, "new")) == 10 and listed.count("cur") == 2


def test_mail_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        box = Maildir({"path": str(tmp_path / "Maildir"), "folder": "Ärenden"})
        asyncio.run(box.deliver("1b2c@sdk.example.se", MAIL))
    finally:
        os.umask(previous)
    for path in (tmp_path / "Maildir").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


@pytest.mark.parametrize(
    ("group", "problem"),
    [
        ("no-such-group-here", "there is no such group"),
        ("", "must name a group"),
        (-1, "must name a group"),
    ],
)
def test_the_group_must_exist(tmp_path: Path, group: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Maildir({"path": str(tmp_path), "group": group})
