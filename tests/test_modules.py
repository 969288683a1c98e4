"""The one reader of module paths (loramix.core.modules), and the one channel the library speaks
through (loramix.core.log)."""

from __future__ import annotations

import logging

import pytest

from loramix.core.modules import parse


@pytest.mark.parametrize(
    "name, stack, layer, within",
    [
        ("model.layers.3.self_attn.q_proj", "model.layers", 3, "self_attn.q_proj"),
        ("transformer.h.11.attn.c_attn", "transformer.h", 11, "attn.c_attn"),
        ("encoder.block.2.layer.1.SelfAttention.q", "encoder.block", 2, "layer.1.SelfAttention.q"),
        ("model.layers.0.mlp.experts.5.down_proj", "model.layers", 0, "mlp.experts.5.down_proj"),
        ("gpt_neox.layers.7.attention.query_key_value", "gpt_neox.layers", 7, "attention.query_key_value"),
        ("model.decoder.layers.1.fc1", "model.decoder.layers", 1, "fc1"),
        ("lm_head", "", None, "lm_head"),
        ("multi_modal_projector.linear_1", "", None, "multi_modal_projector.linear_1"),
    ],
)
def test_layer_and_kind_come_from_the_path(name, stack, layer, within):
    p = parse(name)
    assert (p.stack, p.layer, p.within) == (stack, layer, within)
    assert p.kind == name.rsplit(".", 1)[-1]


def test_every_user_of_layers_agrees_with_the_parser():
    """CAT's groups and inspect's heatmap rows read layers the same way."""
    from loramix.inspect.grid import grid
    from loramix.soup.table import groups

    names = ["encoder.block.2.layer.1.SelfAttention.q", "encoder.block.3.layer.0.SelfAttention.q"]
    assert groups(names, "layer")[0] == ["2", "3"]
    assert grid(dict.fromkeys(names, 1.0)).rows == ["2", "3"]


def test_library_warnings_go_through_the_loramix_logger(caplog):
    from loramix.core import data

    logger = logging.getLogger("loramix")
    logger.addHandler(caplog.handler)  # the CLI's handler may have stopped propagation to the root
    try:
        with caplog.at_level(logging.WARNING, logger="loramix"):
            data.warn_held_out("builtin:math-code")
    finally:
        logger.removeHandler(caplog.handler)
    assert caplog.records and {r.name for r in caplog.records} == {"loramix"}
    assert all("held out for evaluation" in r.getMessage() for r in caplog.records)
