"""load(path) for a local Hugging Face directory, load errors, and the command line."""

import subprocess
import sys

import pytest
import torch
import transformers as tf
from typer.testing import CliRunner

import mechscope as ms
from mechscope.cli import app


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32)
    model = tf.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path, model


def test_load_local_directory_matches_the_saved_model(gpt2_dir):
    path, model = gpt2_dir
    loaded = ms.load(path)
    assert loaded.n_layers == 2 and loaded.tokenizer is None
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    assert torch.equal(ms.run(loaded, ids).logits, ref)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ms.LoadError, match="not a known name"):
        ms.load(tmp_path / "nowhere")
    with pytest.raises(ms.LoadError, match="no tokenizer"):
        ms.wrap(tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))).to_tokens("hi")


def test_cli_lists_sites_of_a_local_model(gpt2_dir):
    path, _ = gpt2_dir
    out = CliRunner().invoke(app, ["sites", str(path), "--layer", "1"])
    assert out.exit_code == 0, out.output
    assert "blocks.1.attn.hook_pattern" in out.output and "blocks.0." not in out.output


def test_cli_help_lists_commands():
    out = CliRunner().invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in ("sites", "top", "capture", "demo", "zoo", "replicate"):
        assert command in out.output


def test_cli_bad_site_is_one_clear_line_and_status_2(gpt2_dir, tmp_path):
    path, _ = gpt2_dir
    # a model directory needs a tokenizer for text input: use the error path of a bad site name instead
    proc = subprocess.run([sys.executable, "-m", "mechscope.cli", "sites", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
