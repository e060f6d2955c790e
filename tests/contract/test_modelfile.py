"""The model file: round trip, hash, and a clear error for every kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contract import modelfile
from contract.modelfile import ModelFileError
from model.reference import evaluate
from support import tiny_qm


@pytest.fixture
def saved(tmp_path):
    qm = tiny_qm()
    path = tmp_path / "m.npz"
    modelfile.save(qm, path)
    return qm, path


def rewrite(path, out, edit_header=None, edit_arrays=None, rehash=False):
    """Rewrite a model file's members (without fixing its hash unless asked)."""
    npz = np.load(path)
    arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays.pop("header").tobytes())
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    if rehash:
        header["hash"] = modelfile.compute_hash(header, arrays)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(out, **arrays)
    return out


def test_round_trip_is_exact(saved):
    qm, path = saved
    back = modelfile.load(path)
    assert back.hash == qm.hash and len(back.hash) == 64
    assert back.formats == qm.formats
    for k, v in qm.arrays().items():
        assert np.array_equal(back.arrays()[k], v), k
    # Same integers out of the reference.
    from support import records_for
    rec, _, _ = records_for(qm)
    a, b = evaluate(qm, rec), evaluate(back, rec)
    assert np.array_equal(a.energy, b.energy) and np.array_equal(a.dEdr, b.dEdr)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        modelfile.load(tmp_path / "nope.npz")


def test_truncated_file(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        modelfile.load(bad)


def test_corrupted_bytes(saved, tmp_path):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 64] = b"\xff" * 64
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError):
        modelfile.load(bad)


def test_not_a_model(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, x=np.zeros(3))
    with pytest.raises(ModelFileError, match="missing 'header'"):
        modelfile.load(p)
    t = tmp_path / "text.npz"
    t.write_text("hello")
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        modelfile.load(t)


def test_wrong_version(saved, tmp_path):
    _, path = saved
    bad = rewrite(path, tmp_path / "v.npz", edit_header=lambda h: h.update({"@version": 99}))
    with pytest.raises(ModelFileError, match="@version is 99"):
        modelfile.load(bad)


def test_wrong_class(saved, tmp_path):
    _, path = saved
    bad = rewrite(path, tmp_path / "c.npz", edit_header=lambda h: h.update({"@class": "deepmd.Model"}))
    with pytest.raises(ModelFileError, match="@class"):
        modelfile.load(bad)


def test_modified_weight_breaks_hash(saved, tmp_path):
    _, path = saved

    def poke(arrays):
        arrays["int/fit/0/0/W"] = arrays["int/fit/0/0/W"].copy()
        arrays["int/fit/0/0/W"][0, 0] += 1
    bad = rewrite(path, tmp_path / "w.npz", edit_arrays=poke)
    with pytest.raises(ModelFileError, match="content hash mismatch"):
        modelfile.load(bad)


def test_inconsistent_content_named_even_with_valid_hash(saved, tmp_path):
    """A file whose hash matches but whose content is inconsistent still names the problem."""
    _, path = saved

    def drop(arrays):
        del arrays["int/table_g/1"]
    with pytest.raises(ModelFileError, match="missing array 'int/table_g/1'"):
        modelfile.load(rewrite(path, tmp_path / "d.npz", edit_arrays=drop, rehash=True))

    def bad_weight(arrays):
        arrays["int/fit/0/1/W"] = arrays["int/fit/0/1/W"] * 4
    with pytest.raises(ModelFileError, match=r"fit\[0\] layer 1: weight outside s18"):
        modelfile.load(rewrite(path, tmp_path / "e.npz", edit_arrays=bad_weight, rehash=True))


# ---- every kind of damage: one ModelFileError naming the file, never a traceback or a pickle hint ----

def _members(path):
    """(name, start, end) of each member's stored (compressed) bytes in the archive."""
    import zipfile
    raw = path.read_bytes()
    out = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            o = info.header_offset
            name_len = int.from_bytes(raw[o + 26:o + 28], "little")
            extra_len = int.from_bytes(raw[o + 28:o + 30], "little")
            start = o + 30 + name_len + extra_len
            out.append((info.filename, start, start + info.compress_size))
    return out


def flip_bytes(raw: bytes, path, seed: int) -> bytes:
    """8 random bytes written over a random place inside one member's deflate stream (where every
    change must be caught: by zlib, the CRC or the hash, never loaded silently)."""
    rng = np.random.default_rng(seed)
    big = [m for m in _members(path) if m[2] - m[1] > 16]
    name, start, end = big[int(rng.integers(len(big)))]
    pos = int(rng.integers(start, end - 8))
    b = bytearray(raw)
    b[pos:pos + 8] = rng.bytes(8)
    return bytes(b)


def _central_entry(raw: bytes, k: int) -> int:
    """Offset of the k-th central-directory record."""
    at = -1
    for _ in range(k + 1):
        at = raw.index(b"PK\x01\x02", at + 1)
    return at


def _set(raw: bytes, at: int, value: bytes) -> bytes:
    return raw[:at] + value + raw[at + len(value):]


def _zip(members: dict) -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy(arr) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


class Touch:
    """Unpickling this creates a file: proof that a loader ran a pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def _with_member(good: bytes, name: str, data: bytes) -> bytes:
    """The intact model archive with member `name` replaced (or added)."""
    import io
    import zipfile
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        out = {info.filename: z.read(info) for info in z.infolist()}
    out[name] = data
    return _zip(out)


def damaged(kind: str, good: bytes, path, tmp_path) -> bytes | None:
    """The bytes of a damaged model file (None: the damage is not a file's content)."""
    rng = np.random.default_rng(0)
    if kind.startswith("flip-seed"):
        return flip_bytes(good, path, int(kind[len("flip-seed"):]))
    if kind.startswith("truncated-"):
        keep = {"half": len(good) // 2, "no-end-record": len(good) - 22, "one-byte-short": len(good) - 1,
                "first-member": _members(path)[0][2]}[kind[len("truncated-"):]]
        return good[:keep]
    if kind == "random-bytes":
        return rng.bytes(5000)
    if kind == "zero-length":
        return b""
    if kind == "npy-not-npz":
        return _npy(np.arange(10))
    if kind == "bad-crc":  # the stored CRC of member 2 no longer matches its (intact) data
        at = _central_entry(good, 2) + 16
        return _set(good, at, bytes(b ^ 0xFF for b in good[at:at + 4]))
    if kind == "unknown-compression":  # method 99 in the directory
        return _set(good, _central_entry(good, 1) + 10, (99).to_bytes(2, "little"))
    if kind == "member-not-npy":  # a member whose bytes are not an array
        return _with_member(good, "int/table_s.npy", rng.bytes(300))
    if kind == "member-not-named-npy":
        return _with_member(good, "README.txt", b"hello")
    if kind == "object-array":  # a pickled object array: must be refused, never unpickled
        return _with_member(good, "float/x.npy", _npy(np.array([Touch(tmp_path / "unpickled")], dtype=object)))
    if kind == "huge-shape":  # a header claiming 8 TB of int64 over 8 bytes of data
        head = _npy(np.zeros(1, np.int64))
        fake = head.replace(b"(1,)", str((10 ** 12,)).encode())
        size = int.from_bytes(fake[8:10], "little") + len(fake) - len(head)
        fake = fake[:8] + size.to_bytes(2, "little") + fake[10:]
        return _with_member(good, "int/table_s.npy", fake)
    if kind == "long-npy-header":  # a header length field of 60,000 bytes (numpy suggests allow_pickle)
        head = bytearray(_npy(np.zeros(1, np.int64)))
        head[8:10] = (60_000).to_bytes(2, "little")
        return _with_member(good, "int/table_s.npy", bytes(head) + b" " * 60_000)
    if kind == "header-not-utf8":
        return _with_member(good, "header.npy", _npy(np.frombuffer(b"\xff\xfe{\x00", np.uint8)))
    if kind == "header-not-json":
        return _with_member(good, "header.npy", _npy(np.frombuffer(b"{not json", np.uint8)))
    if kind == "header-json-list":
        return _with_member(good, "header.npy", _npy(np.frombuffer(b"[1, 2, 3]", np.uint8)))
    if kind == "header-float-array":
        return _with_member(good, "header.npy", _npy(np.arange(5.0)))
    if kind == "directory":
        return None
    raise AssertionError(kind)


DAMAGE = ([f"flip-seed{s}" for s in range(8)]
          + [f"truncated-{w}" for w in ("half", "no-end-record", "one-byte-short", "first-member")]
          + ["random-bytes", "zero-length", "npy-not-npz", "bad-crc", "unknown-compression", "member-not-npy",
             "member-not-named-npy", "object-array", "huge-shape", "long-npy-header", "header-not-utf8",
             "header-not-json", "header-json-list", "header-float-array", "directory"])


@pytest.mark.parametrize("kind", DAMAGE)
def test_every_damage_is_one_clear_error(saved, tmp_path, kind):
    _, path = saved
    bad = tmp_path / "bad.npz"
    data = damaged(kind, path.read_bytes(), path, tmp_path)
    if data is None:
        bad.mkdir()
    else:
        bad.write_bytes(data)
    with pytest.raises(ModelFileError) as err:
        modelfile.load(bad)
    msg = str(err.value)
    assert str(bad) in msg and "pickle" not in msg.lower() and "\n" not in msg, msg
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("kind", ["flip-seed2", "random-bytes", "npy-not-npz", "object-array", "huge-shape"])
def test_cli_reports_damage_in_one_line(saved, tmp_path, kind, capsys):
    """`python -m model info BAD.npz`: one `error:` line naming the file, exit status 2."""
    from model.cli import main
    _, path = saved
    bad = tmp_path / "bad.npz"
    bad.write_bytes(damaged(kind, path.read_bytes(), path, tmp_path))
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and err.count("\n") == 1, err
    assert "pickle" not in err.lower()
