"""The cpu device (host/native/cpu.cpp): model/reference.py's pipeline in C++, against the reference's own
words (model.reference.process_beats), compared with ==: the three bundled models, random records, lanes 1
and 2, several chunk sizes, 1, 2 and 3 threads, both kernel sets (AVX2+FMA where the CPU has it, and the
portable one); every flag (saturation, neighbour overflow by type and beyond sum(sel), r_min, bad types);
the float64 exactness bound's worst case; whole evaluations through the Evaluator and the ASE calculator;
LAMMPS `device cpu` on 1 and 2 ranks against the reference behind the service."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest

from contract import modelfile, wire
from contract.flags import FLAG_BAD_TYPE, FLAG_NEIGHBOR_OVERFLOW, FLAG_R_BELOW_MIN, FLAG_SATURATED
from contract.paths import MODELS
from host import native
from host.devices import DeviceError
from model.reference import NeighborRecords, evaluate, process_beats

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core cannot be built here")


@pytest.fixture(scope="module", params=sorted(MODELS))
def any_qm(request):
    return modelfile.load(MODELS[request.param])


@pytest.fixture(scope="module")
def gete_qm():
    return modelfile.load(MODELS["GeTe"])


def records(qm, n, seed, rlo=1.0, rhi=7.5, max_count=None):
    """n atoms with random centre types and up to max_count records each (neighbour types at random, within
    sel per type), distances uniform in [rlo, rhi] Å, as the coord format holds them."""
    rng = np.random.default_rng(seed)
    cfg, coord = qm.config, qm.formats["coord"]
    m = sum(cfg.sel)
    ct = rng.integers(0, cfg.ntypes, n)
    nt = np.full((n, m), -1)
    for i in range(n):
        k = 0
        for t, s in enumerate(cfg.sel):
            c = int(rng.integers(0, min(s, max_count or s) + 1))
            nt[i, k:k + c] = t
            k += c
        nt[i, :k] = rng.permutation(nt[i, :k])  # types mixed in any order
    v = rng.normal(size=(n, m, 3))
    v *= rng.uniform(rlo, rhi, (n, m, 1)) / np.linalg.norm(v, axis=-1, keepdims=True)
    d = np.floor(v * 2.0 ** coord.frac + 0.5).astype(np.int64)
    d[nt < 0] = 0
    return ct, nt, d


def check(qm, dev, ct, nt, d, chunk, lanes):
    """Each chunk of atoms through the device (up to two in flight) == the reference's words."""
    n = len(ct)
    pieces = [slice(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
    beats = [wire.encode_atoms(ct[s], nt[s], d[s], lanes, tags=np.arange(n)[s]) for s in pieces]
    expect = [process_beats(qm, b, s.stop - s.start, lanes) for b, s in zip(beats, pieces)]
    got = []
    for k, (b, s) in enumerate(zip(beats, pieces)):
        dev.submit(b, s.stop - s.start)
        if k >= 1:
            got.append(dev.collect(60))
    got.append(dev.collect(60))
    for k, (e, g) in enumerate(zip(expect, got)):
        assert e.shape == g.shape and (e == g).all(), f"chunk {k}: words differ from the reference"
    return np.concatenate(expect)


@pytest.mark.parametrize("lanes, threads, chunk, seed", [(1, 1, 64, 0), (2, 2, 7, 1), (1, 3, 50, 2), (2, 1, 1, 3)])
def test_words_equal_the_reference(any_qm, lanes, threads, chunk, seed):
    ct, nt, d = records(any_qm, 100, seed)
    with native.open_device("cpu", any_qm, lanes=lanes, threads=threads) as dev:
        assert dev.lanes == lanes and f"{threads} thread" in dev.describe()
        check(any_qm, dev, ct, nt, d, chunk, lanes)


def test_portable_kernels_and_thread_counts_give_the_same_words(gete_qm):
    """Dense neighbourhoods (saturation on many atoms) and sparse ones, one chunk of 150 atoms (several
    batches: threads share them out), through both kernel sets and 1, 2, 3 threads."""
    ct, nt, d = records(gete_qm, 150, 7, rlo=1.6)
    beats = wire.encode_atoms(ct, nt, d, 1)
    expect = process_beats(gete_qm, beats, len(ct), 1)
    for spec in ("cpu", "cpu:generic"):
        for threads in (1, 2, 3):
            with native.open_device(spec, gete_qm, threads=threads) as dev:
                assert (dev.run(beats, len(ct)) == expect).all(), f"{spec}, {threads} threads"
    assert "portable kernels" in native.open_device("cpu:generic", gete_qm, threads=1).describe()


def flagged(qm, ct, nt, d, lanes=1):
    """The reference's and the cpu device's words for these atoms, compared; the flags of each atom."""
    with native.open_device("cpu", qm, lanes=lanes, threads=2) as dev:
        words = check(qm, dev, ct, nt, d, len(ct), lanes)
    _, _, flags, _ = wire.decode_results(words, len(ct), nt.shape[1])
    return flags


def test_every_flag(any_qm):
    """Atoms crafted for each flag, mixed with ordinary ones in one chunk: per-type overflow (records kept,
    zero dE/dr), count > sum(sel) (no records back), a neighbour type and a centre type outside the type map,
    pairs below r_min, saturation (crowded neighbourhoods)."""
    qm = any_qm
    cfg = qm.config
    m = sum(cfg.sel) + 1
    ct, nt, d = records(qm, 12, 11, rlo=2.5)
    nt = np.concatenate([nt, np.full((12, 1), -1)], axis=1)
    d = np.concatenate([d, np.zeros((12, 1, 3), np.int64)], axis=1)
    nt[0, :] = -1
    nt[0, :cfg.sel[0] + 1] = 0                  # one more of type 0 than sel
    nt[1, :] = 0                                # sum(sel) + 1 records: dropped before the pipeline
    d[1] = d[2]
    nt[2, 3] = cfg.ntypes                       # a neighbour type outside the type map
    ct[3] = cfg.ntypes                          # a centre type outside it
    d[4, 0] = [int(0.5 * 2 ** qm.formats["coord"].frac), 0, 0]  # 0.5 Å: below r_min
    nt[4, 0] = 0
    crowded = records(qm, 3, 12, rlo=1.0, rhi=2.2)
    nt[5:8, :m - 1], d[5:8, :m - 1] = crowded[1], crowded[2]  # every slot filled, all close: saturates
    flags = flagged(qm, ct, nt, d)
    assert flags[0] == FLAG_NEIGHBOR_OVERFLOW and flags[1] == FLAG_NEIGHBOR_OVERFLOW
    assert flags[2] & FLAG_BAD_TYPE and flags[3] & FLAG_BAD_TYPE
    assert flags[4] & FLAG_R_BELOW_MIN
    assert all(flags[5:8] & FLAG_SATURATED)
    assert not (flags[8:] & (FLAG_BAD_TYPE | FLAG_NEIGHBOR_OVERFLOW)).any()
    flagged(qm, ct, nt, d, lanes=2)


def test_sel_exactly_full_is_no_overflow(gete_qm):
    cfg = gete_qm.config
    ct, nt, d = records(gete_qm, 4, 5, rlo=2.0)
    nt[:, :] = -1
    nt[:, :sum(cfg.sel)] = np.repeat(np.arange(cfg.ntypes), cfg.sel)
    flags = flagged(gete_qm, ct, nt, d)
    assert not (flags & FLAG_NEIGHBOR_OVERFLOW).any()


def worst_case_model(qm, ct, nt, d):
    """A copy of qm whose fitting weights all have the W format's largest magnitude, signed so that the
    first layer's sums for atom 0 add |D| over every input: the float64 sums come close to the bound that
    the cpu device checks (|x| <= 2^(D bits - 1), |W| <= 2^(W bits - 1), 128 terms: 2^50 here, and the
    device refuses a model whose bound passes 2^52)."""
    trace = {}
    evaluate(qm, NeighborRecords(ct, nt, d), trace=trace)
    D = trace["D"][0]
    w = copy.deepcopy(qm)
    big = -qm.formats["W"].lo  # 2^17
    for layers, out in zip(w.fit, w.out_w):
        first = layers[0]
        sign = np.where(D >= 0, 1, -1)
        first.W = np.repeat((sign * (big - 1))[:, None], first.W.shape[1], axis=1).astype(np.int64)
        first.W[:, ::2] = -first.W[:, ::2]  # both signs of the sum
        for layer in layers[1:]:
            layer.W = np.full_like(layer.W, -big)  # W.lo: the largest magnitude
        out[:] = -big
    w.hash = ""
    w.hash = modelfile.content_hash(w)
    return w, D


def test_exactness_worst_case(gete_qm):
    """Descriptors saturated (crowded neighbourhoods put D at its format's limits) times the largest
    weights: the first layer's float64 sums come within 15 % of their 2^50 bound, and every word still
    equals the reference's (which splits its products where they would pass 2^53)."""
    qm = gete_qm
    ct, nt, d = records(qm, 24, 21, rlo=1.0, rhi=2.0)
    ct[0] = 0
    w, D = worst_case_model(qm, ct, nt, d)
    Dfmt, Wfmt = qm.formats["D"], qm.formats["W"]
    assert (np.abs(D) >= Dfmt.hi).mean() > 0.8  # the descriptor saturated
    acc = np.abs(D.astype(object) @ w.fit[0][0].W[:, 0].astype(object))
    assert 0.85 * 2 ** 50 <= acc <= 2 ** (Dfmt.bits - 1 + Wfmt.bits - 1 + 7)  # near the bound, within it
    with native.open_device("cpu", w, threads=2) as dev:
        check(w, dev, ct, nt, d, 24, 1)
    with native.open_device("cpu:generic", w, threads=1) as dev:
        check(w, dev, ct, nt, d, 24, 1)


def rehashed(w):
    w.hash = ""
    w.hash = modelfile.content_hash(w)
    return w


def test_g_tables_that_saturate_and_clamp(gete_qm):
    """The embed kernel skips clipping G and G' in a segment where no position and no channel leaves the
    formats (checked when the model loads; every segment of the bundled models): a table whose every other
    segment saturates G (a at the coefficient maximum) or G' (b at its minimum), and one whose x_min lies
    inside the range that the records use (the constant part below it: no slope), against the reference,
    through both kernel sets."""
    qm = rehashed(copy.deepcopy(gete_qm))
    g0, g1 = qm.table_g[0], qm.table_g[1]
    g0.coef = g0.coef.copy()
    g0.coef[0::4, 5, 0] = g0.coef_fmt.hi                 # y = a >> (coef.frac - out.frac): past G's range
    g0.coef[1::4, 7, 1] = -(1 << (g0.coef_fmt.bits - 1))  # dy from b: past G''s range
    g1.x_min = int(np.median(np.arange(g1.nseg)) * 2 ** (g1.x_frac - g1.seg_shift)) // 2 + 5
    rehashed(qm)
    ct, nt, d = records(qm, 60, 31, rlo=2.0, rhi=7.0)
    beats = wire.encode_atoms(ct, nt, d, 1)
    expect = process_beats(qm, beats, len(ct), 1)
    _, _, flags, _ = wire.decode_results(expect, len(ct), nt.shape[1])
    assert (flags & FLAG_SATURATED).mean() > 0.5  # the saturating segments are in use
    for spec in ("cpu", "cpu:generic"):
        with native.open_device(spec, qm, threads=2) as dev:
            assert (dev.run(beats, len(ct)) == expect).all(), spec


def test_descriptor_and_dgr_in_float64_and_in_int64(gete_qm):
    """Stages 6 (D = GR^T GR) and 9 (dGR = GR dD) run in float64 for an atom whose sums stay below 2^53
    (4 max|GR|^2, (M1 + M2) max|GR| max|dD|: every atom of the bundled models, |GR| <= 2^25 of 2^26) and in
    int64 otherwise.  Sparse and crowded atoms: with the model as it is (float64), with GR two bits wider
    (crowded atoms' D in int64), and with `cpu:int64` (both stages in int64 for every atom), through both
    kernel sets."""
    sparse = records(gete_qm, 20, 41, rlo=3.0, rhi=7.5)
    dense = records(gete_qm, 20, 42, rlo=1.0, rhi=2.2)
    ct, nt, d = (np.concatenate([a, b]) for a, b in zip(sparse, dense))
    wide = copy.deepcopy(gete_qm)
    GR = wide.formats["GR"]
    wide.formats = dict(wide.formats, GR=type(GR)(GR.bits + 2, GR.frac + 2))
    rehashed(wide)
    beats = wire.encode_atoms(ct, nt, d, 1)
    for qm, d_slow in ((gete_qm, 0), (wide, 5)):
        cfg, F = qm.config, qm.formats
        trace = {}
        evaluate(qm, NeighborRecords(ct, nt, d), trace=trace)
        gmax = np.abs(trace["GR"]).reshape(len(ct), -1).max(axis=1).astype(float)
        dmax = np.abs(trace["dD"]).max(axis=1).astype(float)
        k_d = 2 * F["GR"].frac - cfg.desc_shift - F["D"].frac
        k_dgr = F["GR"].frac + F["dD"].frac - cfg.desc_shift - F["dGR"].frac
        slow_d = (4 * gmax ** 2 >= 2.0 ** 53 - 2.0 ** (k_d - 1)).sum()
        assert (slow_d >= d_slow) if d_slow else slow_d == 0
        assert ((cfg.m1 + cfg.axis_neurons) * gmax * dmax < 2.0 ** 53 - 2.0 ** (k_dgr - 1)).all()
        expect = process_beats(qm, beats, len(ct), 1)
        for spec in ("cpu", "cpu:generic", "cpu:int64", "cpu:generic,int64"):
            with native.open_device(spec, qm, threads=1) as dev:
                assert (dev.run(beats, len(ct)) == expect).all(), spec


def test_dgj_clipped_only_where_it_can_saturate(gete_qm):
    """The backward kernel skips clipping dGj = rq(R_j dGR) for an atom whose bound sum_k max|R_k|
    max|dGR_k| rounds inside dGj's format (every atom of the bundled models).  With dGj four bits
    narrower, some atoms saturate there (so they took the clipping path) and some stay within the bound
    even with max|R_k| at R's format limit (so they skipped it): both, through both kernel sets, against
    the reference."""
    ct, nt, d = records(gete_qm, 80, 52, rlo=2.6, rhi=7.5)
    beats = wire.encode_atoms(ct, nt, d, 1)
    narrow = copy.deepcopy(gete_qm)
    F = narrow.formats
    narrow.formats = dict(F, dGj=type(F["dGj"])(F["dGj"].bits - 4, F["dGj"].frac))
    rehashed(narrow)
    _, _, flags, _ = wire.decode_results(process_beats(gete_qm, beats, len(ct), 1), len(ct), nt.shape[1])
    expect = process_beats(narrow, beats, len(ct), 1)
    _, _, narrow_flags, _ = wire.decode_results(expect, len(ct), nt.shape[1])
    assert not (flags & FLAG_SATURATED).any() and (narrow_flags & FLAG_SATURATED).sum() >= 3
    trace = {}
    evaluate(narrow, NeighborRecords(ct, nt, d), trace=trace)
    bound = F["R"].hi * np.abs(trace["dGR"]).max(axis=2).sum(axis=1).astype(float)
    k = F["R"].frac + F["dGR"].frac + narrow.config.norm_shift - F["dGj"].frac
    assert (np.floor(bound * 2.0 ** -k + 0.5) <= narrow.formats["dGj"].hi).sum() >= 3
    for spec in ("cpu", "cpu:generic"):
        with native.open_device(spec, narrow, threads=1) as dev:
            assert (dev.run(beats, len(ct)) == expect).all(), spec


def test_a_model_beyond_the_bounds_is_refused(gete_qm):
    """Weights of 21 bits: first-layer sums could reach 2^53, beyond float64's exact integers."""
    w = copy.deepcopy(gete_qm)
    w.formats = dict(w.formats, W=type(w.formats["W"])(21, 0))
    w.hash = ""
    w.hash = modelfile.content_hash(w)
    with pytest.raises(modelfile.ModelFileError, match=r"fit\[0\] layer 0 forward sum .*s21\.16.*2\^53"):
        native.open_device("cpu", w, threads=1)
    w2 = copy.deepcopy(gete_qm)
    w2.formats = dict(w2.formats, Z=type(w2.formats["Z"])(32, 25))
    w2.hash = ""
    w2.hash = modelfile.content_hash(w2)
    with pytest.raises(modelfile.ModelFileError, match="tanh4"):
        native.open_device("cpu", w2, threads=1)


def test_model_text_without_pipeline_and_bad_streams(gete_qm):
    mod = native.module()
    with pytest.raises(modelfile.ModelFileError, match="no pipeline_. lines"):
        native._call(mod.open_device, "cpu", native.model_of(gete_qm), threads=1)
    with pytest.raises(DeviceError, match="unknown option"):
        native.open_device("cpu:fast", gete_qm)
    with pytest.raises(DeviceError, match="threads must be >= 1"):
        native.open_device("cpu", gete_qm, threads=-1)
    ct, nt, d = records(gete_qm, 5, 3)
    beats = wire.encode_atoms(ct, nt, d, 2)
    with native.open_device("cpu", gete_qm, lanes=2, threads=1) as dev:
        with pytest.raises(DeviceError, match="cpu: chunk announces 6 atoms, stream has 5"):
            dev.run(beats, 6)
        with pytest.raises(DeviceError, match=r"cpu: atom 0 \(tag 0\): header announces \d+ records, stream has"):
            dev.run(beats[[0] + list(range(2, len(beats)))], 5)
        with pytest.raises(DeviceError, match="does not start with a header"):
            dev.run(beats[1:], 5)
        with pytest.raises(DeviceError, match="collect.. without a chunk"):
            dev.collect(1)
        assert (dev.run(beats, 5) == process_beats(gete_qm, beats, 5, 2)).all()  # still well after errors
        assert dev.run(np.zeros((0, 2), np.uint64), 0).shape == (0, 2)
    text = native.host_model_text(gete_qm, pipeline=True)
    broken = text.replace("pipeline_layer_b 0 1 ", "pipeline_layer_b 0 1 1 ")
    with pytest.raises(modelfile.ModelFileError, match="128 values expected"):
        native._call(mod.Model, broken)
    # an option the device does not compute is refused by name, never computed without it
    unknown = text.replace("pipeline_format ", "pipeline_options fit_timestep\npipeline_format ", 1)
    with pytest.raises(modelfile.ModelFileError, match="option fit_timestep is not computed by the cpu device"):
        native._call(mod.open_device, "cpu", native._call(mod.Model, unknown), threads=1)


# ---- whole evaluations -------------------------------------------------------------------------------

def structure(qm, natoms, seed, dmin=2.3):
    from support import random_structure
    pos, cell, types = random_structure(natoms=natoms, box=natoms ** (1 / 3) * 3.1, ntypes=qm.config.ntypes,
                                        dmin=dmin, seed=seed, triclinic=True)
    return pos, cell, types


def same_result(a, b):
    assert a.energy_int == b.energy_int and a.energy == b.energy
    assert (a.forces_int == b.forces_int).all() and (a.forces == b.forces).all()
    assert (a.virial_int == b.virial_int).all() and (a.virial == b.virial).all()
    assert (a.atomic_energies == b.atomic_energies).all() and (a.flags == b.flags).all()
    assert (a.atomic_virial == b.atomic_virial).all()


@pytest.mark.parametrize("native_host", [True, False])
def test_evaluator_cpu_equals_reference(any_qm, native_host):
    """Energies, forces, virials, per-atom values and flags through the Evaluator (the native core, or the
    Python path driving the same cpu device), chunked (50 atoms) with two chunks in flight."""
    from host.devices import open_device
    from host.evaluate import Evaluator
    qm = any_qm
    pos, cell, types = structure(qm, 120, 4)
    results = {}
    for spec in ("reference", "cpu"):
        with open_device(spec, qm, **({"threads": 2} if spec == "cpu" else {})) as dev:
            ev = Evaluator(qm, dev, chunk_atoms=50, native=native_host)
            results[spec] = ev.compute(pos, cell, [True] * 3, types, atomic_virial=True)
    same_result(results["cpu"], results["reference"])
    assert np.abs(results["cpu"].forces).max() > 0.01


def test_below_rmin_through_the_evaluator(gete_qm):
    """A pair closer than r_min with allow_below_rmin: flagged R_BELOW_MIN on both devices, same numbers."""
    from host.devices import open_device
    from host.evaluate import Evaluator
    qm = gete_qm
    pos, cell, types = structure(qm, 40, 8)
    pos = pos.copy()
    pos[1] = pos[0] + [qm.config.r_min * 0.8, 0, 0]
    results = {}
    for spec in ("reference", "cpu"):
        with open_device(spec, qm) as dev:
            results[spec] = Evaluator(qm, dev, allow_below_rmin=True).compute(pos, cell, [True] * 3, types,
                                                                              atomic_virial=True)
    same_result(results["cpu"], results["reference"])
    assert results["cpu"].flags[0] & FLAG_R_BELOW_MIN and results["cpu"].below_rmin_records >= 2


def test_ase_calculator_device_cpu(gete_qm):
    import ase.build

    from host.ase import Calculator
    atoms = ase.build.bulk("GeTe", "rocksalt", a=6.0, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=2)
    out = {}
    for device in ("reference", "cpu"):
        atoms.calc = Calculator(device=device)
        out[device] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
        assert atoms.calc.device.name == device
    assert out["cpu"][0] == out["reference"][0]
    assert (out["cpu"][1] == out["reference"][1]).all() and (out["cpu"][2] == out["reference"][2]).all()


def test_cpu_device_needs_the_native_core(gete_qm, monkeypatch):
    from host import devices
    monkeypatch.setattr(native, "available", lambda: False)
    monkeypatch.setattr(native, "why_not", lambda: "no compiler (test)")
    with pytest.raises(DeviceError, match="device cpu needs the native host core.*no compiler"):
        devices.open_device("cpu", gete_qm)


# ---- LAMMPS ----------------------------------------------------------------------------------------

def test_lammps_device_cpu_equals_the_reference_in_the_service(tmp_path):
    """pair_style nvnmd ... device cpu (in-process, threads 1 and 2) on 1 and 2 ranks against device
    reference behind the service, over a few NVE steps: thermo rows and per-atom dumps identical."""
    from test_lammps import gete, write_data
    from test_lammps_native import NVE_STEPS, run_case

    from contract.paths import EXAMPLE_MODEL
    from host.lammps_plugin import build
    build()
    atoms = gete(repeat=2)
    rng = np.random.default_rng(3)
    data = write_data(tmp_path / "atoms.data", atoms, velocities=rng.normal(scale=3.0, size=(len(atoms), 3)))
    model = str(EXAMPLE_MODEL)
    ref = run_case(tmp_path / "reference", data, model, "device reference host service", steps=NVE_STEPS)
    for np_, extra in ((1, "threads 1"), (2, ""), (1, "threads 2")):
        got = run_case(tmp_path / f"cpu-{np_}-{extra.replace(' ', '')}", data, model, f"device cpu {extra}",
                       np_=np_, steps=NVE_STEPS)
        assert "device cpu (lanes 1, " in got[2] and "in-process" in got[2]
        assert got[:2] == ref[:2], f"device cpu on {np_} rank(s) ({extra}) differs from the reference"
    assert len({row.split()[1] for row in ref[0]}) > 1  # the energy moved
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize("activation", ["tanh", "tanh4"])
@pytest.mark.parametrize("spec", ["cpu", "cpu:generic,int64"])
@pytest.mark.parametrize("lanes, threads, chunk, seed", [(1, 1, 64, 0), (2, 3, 7, 1)])
def test_a_model_with_options_gives_the_reference_words(activation, spec, lanes, threads, chunk, seed):
    """A quantized DeePMD-kit import (env_norm, pad_slots; fit_activation tanh or tanh4) on the cpu device's
    kernels, both sets: every word == the reference's, pairs below r_min and past rcut and the stream faults
    (a type over its sel, a bad centre type) included; saturation too, with the descriptor's format narrowed
    by 4 bits (the quantizer's formats leave this small model none)."""
    from contract.fixedpoint import Fmt
    from deepmd_graph import imported_qm
    qm = copy.deepcopy(imported_qm(activation)[0])
    qm.formats["D"] = Fmt(qm.formats["D"].bits, qm.formats["D"].frac + 4)
    qm = rehashed(qm)
    cfg = qm.config
    ct, nt, d = records(qm, 40, seed, rlo=1.2, rhi=4.1)
    nt[0, :] = -1
    nt[0, :cfg.sel[0] + 1] = 0   # one more of type 0 than sel
    ct[1] = cfg.ntypes           # a centre type outside the type map
    nt[2, :] = -1                # no neighbours: empty slots only
    with native.open_device(spec, qm, lanes=lanes, threads=threads) as dev:
        words = check(qm, dev, ct, nt, d, chunk, lanes)
    _, _, flags, _ = wire.decode_results(words, len(ct), nt.shape[1])
    assert flags[0] == FLAG_NEIGHBOR_OVERFLOW and flags[1] & FLAG_BAD_TYPE
    assert (flags & FLAG_R_BELOW_MIN).any() and (flags & FLAG_SATURATED).any() and not (flags & FLAG_SATURATED).all()


@pytest.mark.parametrize("spec", ["cpu", "cpu:generic,int64"])
@pytest.mark.parametrize("lanes, threads, chunk, seed", [(1, 1, 64, 2), (2, 2, 5, 3)])
def test_a_model_with_the_banded_descriptor_gives_the_reference_words(spec, lanes, threads, chunk, seed):
    """desc_band (NVNMD's D[a, k] = T[a, (a + k) mod M1]) with env_norm and pad_slots, on both kernel sets
    and on stages 6 and 9's int64 path: every word == the reference's; the same model without the band
    gives other words (so the band is computed, not ignored)."""
    import dataclasses
    from deepmd_graph import imported_qm
    base = imported_qm("tanh4")[0]
    qm = rehashed(dataclasses.replace(copy.deepcopy(base), config=dataclasses.replace(base.config, desc_band=True)))
    ct, nt, d = records(qm, 30, seed, rlo=1.2, rhi=4.1)
    with native.open_device(spec, qm, lanes=lanes, threads=threads) as dev:
        words = check(qm, dev, ct, nt, d, chunk, lanes)
    with native.open_device(spec, base, lanes=lanes, threads=threads) as dev:
        plain = check(base, dev, ct, nt, d, chunk, lanes)
    assert not np.array_equal(np.asarray(words), np.asarray(plain))
