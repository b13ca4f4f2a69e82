"""Which precision a tuner worker trains in (search.precision)."""

from __future__ import annotations


def test_auto_precision_is_bfloat16_only_on_a_cpu_that_computes_it(tmp_path):
    from glasses.search.worker import resolve_precision

    native, plain = tmp_path / "native", tmp_path / "plain"
    native.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert resolve_precision("auto", native) == "bfloat16"
    assert resolve_precision("auto", plain) == "float32"
    assert resolve_precision("auto", tmp_path / "missing") == "float32"
    assert resolve_precision("float32", native) == "float32" and resolve_precision("bfloat16", plain) == "bfloat16"
