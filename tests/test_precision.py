"""bf16 on a CPU that would emulate it gets a warning that names the setting to change."""

import pytest

from arm import precision


@pytest.mark.parametrize("native,asked,warned", [(False, "bf16-mixed", True), (True, "bf16-mixed", False),
                                                 (False, "32-true", False)])
def test_bf16_on_an_emulating_cpu_warns_with_the_fix(monkeypatch, capsys, native, asked, warned):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    precision.warn_if_bf16_is_emulated(asked, "cpu", "pretrain.precision")
    err = capsys.readouterr().err
    assert ("set pretrain.precision=32-true" in err) == warned


def test_native_bf16_check_answers_without_error():
    assert precision.cpu_has_native_bf16() in (True, False)
