"""The model file: round trip, hash, and a clear error for every kind of bad file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import modelfile
from model.modelfile import ModelFileError
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
    from test_reference import records_for
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
