"""The generated C++ headers (contract/include/dpfpga/*.h, `python -m contract headers`).

* every committed header is the generator's output, byte for byte;
* compiled with g++ (-Wall -Wextra -Werror), the headers give the Python values: the protocol
  structs' sizes, the protocol's codes, every wire field and flag, every register offset and bit; and
  the C++ Field helpers pack and unpack words exactly as the NumPy codec does.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from contract import flags, headers, protocol, registers, wire
from contract.paths import INCLUDE_DIR


@pytest.mark.parametrize("path", sorted(headers.HEADERS))
def test_committed_header_is_the_generators_output(path):
    target = INCLUDE_DIR / path
    assert target.exists(), f"{target} is missing: run `{headers.COMMAND}`"
    assert target.read_text() == headers.generate()[path], f"{target} is stale: run `{headers.COMMAND}`"


def test_check_names_a_stale_header(tmp_path, capsys):
    from contract.__main__ import main
    assert main(["headers", "--out", str(tmp_path)]) == 0
    assert main(["headers", "--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "dpfpga" / "regs.h").write_text("/* edited by hand */\n")
    assert main(["headers", "--check", "--out", str(tmp_path)]) == 1
    assert "regs.h is stale: run `python -m contract headers`" in capsys.readouterr().err


def expected_values() -> list[tuple[str, int]]:
    """(C++ expression, value the Python contract gives it)."""
    out = [(f"sizeof(protocol::{h.c_name})", h.struct.size) for h in protocol.HEADERS]
    out += [("protocol::PROTOCOL_VERSION", protocol.PROTOCOL_VERSION),
            ("protocol::FORCES_SCALARS", protocol.FORCES_SCALARS),
            ("std::memcmp(protocol::MAGIC, \"" + protocol.MAGIC.decode() + "\", 4) == 0", 1),
            ("sizeof(protocol::MAGIC)", len(protocol.MAGIC)),
            ("protocol::MAX_PAYLOAD", protocol.MAX_PAYLOAD)]
    out += [(f"protocol::{name}", code) for code, name in protocol.MESSAGE_NAMES.items()]
    out += [(f"std::strcmp(protocol::message_name({code}), \"{name}\") == 0", 1)
            for code, name in protocol.MESSAGE_NAMES.items()]
    out += [(f"protocol::{name}", bit) for name, (bit, _) in protocol.WANT_BITS.items()]
    out += [(f"protocol::FORCES_{name.upper()}", protocol.FORCES_OFFSETS[name]) for name, _ in protocol.FORCES_SCALAR_FIELDS]
    out += [(f"protocol::FORCES_{name.upper()}_COUNT", n) for name, n in protocol.FORCES_SCALAR_FIELDS]
    for h in protocol.HEADERS:  # field offsets too: a reordered field keeps the size
        at = 0
        for name, code, _ in h.fields:
            out.append((f"offsetof(protocol::{h.c_name}, {name})", at))
            at += protocol.struct.calcsize("<" + code)
    out += [("wire::WORD_BITS", wire.WORD_BITS), ("wire::TAG_BITS", wire.TAG_BITS), ("wire::COUNT_BITS", wire.COUNT_BITS),
            ("wire::TYPE_BITS", wire.TYPE_BITS), ("wire::COORD_BITS", wire.COORD_BITS),
            ("wire::FORCE_BITS", wire.FORCE_BITS), ("wire::ENERGY_BITS", wire.ENERGY_BITS),
            ("wire::FLAG_BITS", flags.FLAG_BITS), ("wire::HEADER", wire.HEADER), ("wire::RECORD", wire.RECORD),
            ("wire::PAD", wire.PAD), ("wire::KIND.shift", wire.KIND.lo), ("wire::KIND.bits", wire.KIND.width)]
    for w in wire.WORDS:
        out.append((f"wire::{w.name}::KIND_BITS", w.kind_bits))
        for f in w.fields:
            if f is not wire.KIND:
                c = f"wire::{w.name}::{f.name.upper()}"
                out += [(f"{c}.shift", f.lo), (f"{c}.bits", f.width), (f"{c}.is_signed", int(f.signed)),
                        (f"{c}.mask()", f.mask)]
    out += [(f"wire::flags::{name.upper()}", mask) for mask, name, _ in flags.FLAGS]
    regs = registers.shell_registers(lanes=1, model_hash="0" * 64)
    out += [("regs::SHELL_MAGIC", registers.SHELL_MAGIC), ("regs::SHELL_VERSION", registers.SHELL_VERSION),
            ("regs::BAR_SIZE", regs.size), ("regs::HASH_WORDS", registers.HASH_WORDS)]
    for r in regs:
        out.append((f"regs::{r.name}_ADDR", r.offset))
        out += [(f"regs::{r.name}_{f.name.upper()}", 1 << f.bit) for f in r.fields]
    return out


def test_cpp_sees_the_python_values(tmp_path):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    values = expected_values()
    rng = np.random.default_rng(11)
    # Words packed by the C++ helpers from the same random fields as the NumPy codec packs them.
    rtype, d = rng.integers(0, 1 << wire.TYPE_BITS, 20), rng.integers(-(1 << 17), 1 << 17, (20, 3))
    d[0], d[1] = -(1 << 17), (1 << 17) - 1
    rec = wire.input_record(rtype, d)
    pack_rec = [f"wire::input_record::KIND_BITS | wire::input_record::TYPE.put({t}) | "
                + " | ".join(f"wire::input_record::{a}.put(uint64_t(int64_t({v})))" for a, v in zip(("DX", "DY", "DZ"), row))
                for t, row in zip(rtype, d)]
    unpack = [f"wire::input_record::DZ.get_signed({int(w)}ull)" for w in rec]
    tags = [0, 4095, 4096, 123456]
    lines = [f'  std::printf("%llu\\n", (unsigned long long)({expr}));' for expr, _ in values]
    lines += [f'  std::printf("%llu\\n", (unsigned long long)({expr}));' for expr in pack_rec]
    lines += [f'  std::printf("%lld\\n", (long long)({expr}));' for expr in unpack]
    lines += [f'  std::printf("%llu\\n", (unsigned long long)wire::tag_of({t}));' for t in tags]
    lines += [f'  std::printf("%u\\n", wire::kind({int(w)}ull));' for w in rec[:2]]
    src = tmp_path / "values.cpp"
    src.write_text("#include \"dpfpga/protocol.h\"\n#include \"dpfpga/regs.h\"\n#include \"dpfpga/wire.h\"\n"
                   "#include <cstddef>\n#include <cstdio>\n#include <cstring>\n"
                   "using namespace dpfpga;\nint main()\n{\n" + "\n".join(lines) + "\n  return 0;\n}\n")
    exe = tmp_path / "values"
    r = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE_DIR}", str(src), "-o", str(exe)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout.split()
    expect = ([v for _, v in values] + [int(w) for w in rec] + d[:, 2].tolist() + [int(wire.tag_of(t)) for t in tags]
              + [wire.RECORD] * 2)
    assert len(got) == len(expect)
    names = [e for e, _ in values] + [f"pack record {k}" for k in range(len(rec))] + \
        [f"unpack dz {k}" for k in range(len(rec))] + [f"tag_of({t})" for t in tags] + ["kind"] * 2
    wrong = [f"{n}: C++ {g}, Python {e}" for n, g, e in zip(names, got, expect) if int(g) != int(e)]
    assert not wrong, "\n".join(wrong)
