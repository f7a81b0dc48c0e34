"""mechscope diff on the command line: Hugging Face directories, a text file as corpus, --out and
--json, and a clear error for networks of different shapes."""

import json
import subprocess
import sys

import pytest
import torch
import transformers as tf
from typer.testing import CliRunner

from mechscope.cli import app
from mechscope.core.errors import LoadError

CHARS = "abcdefghijklmnopqrstuvwxyz .,\n"


def save_gpt2(path, n_embd=32, seed=0, perturb=0.0):
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(seed)
    cfg = tf.GPT2Config(n_layer=2, n_embd=n_embd, n_head=4, vocab_size=len(CHARS) + 1, n_positions=32,
                        bos_token_id=len(CHARS), eos_token_id=len(CHARS))
    model = tf.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g))
    model.save_pretrained(path)
    vocab = {c: i for i, c in enumerate(CHARS)} | {"<eos>": len(CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffcli")
    a = save_gpt2(root / "a")
    b = save_gpt2(root / "b", perturb=0.02)
    wide = save_gpt2(root / "wide", n_embd=48)
    text = root / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    return a, b, wide, text, root


def test_cli_diff_writes_json_and_html(dirs):
    a, b, _, text, root = dirs
    out = root / "out"
    res = CliRunner().invoke(app, ["diff", str(a), str(b), "--corpus", str(text), "--windows", "6", "--seq-len", "16",
                                   "--control", str(b), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["a"] == str(a) and data["corpus"] == "text.txt" and data["kl"]["value"] > 0
    assert {f["kind"] for f in data["findings"]} == {"weight", "behaviour", "activation"}
    # B against itself as the control: nothing exceeds 1.5 times the same measurement
    assert data["n_above_threshold"] == 0
    assert json.loads((out / "diff.json").read_text())["b"] == str(b)
    assert (out / "diff.html").read_text().startswith("<!doctype html>")


def test_cli_diff_of_different_shapes_is_one_clear_line_and_status_2(dirs):
    a, _, wide, text, _ = dirs
    proc = subprocess.run([sys.executable, "-m", "mechscope.cli", "diff", str(a), str(wide), "--corpus", str(text)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "transformer.wte.weight has shape [31, 32] in A and [31, 48] in B" in " ".join(proc.stdout.split())


def test_cli_diff_of_a_missing_checkpoint_names_it(dirs, tmp_path):
    a, *_ = dirs
    res = CliRunner().invoke(app, ["diff", str(a), str(tmp_path / "gone"), "--out", str(tmp_path / "out")])
    assert isinstance(res.exception, LoadError)  # `main` prints it as one line with status 2
    assert str(res.exception).startswith("B: ") and f"{tmp_path / 'gone'} does not exist" in str(res.exception)
    assert not (tmp_path / "out").exists()
