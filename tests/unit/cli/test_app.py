"""The CLI answers bad input and interruptions with a short message and an exit code, never a traceback."""

from __future__ import annotations

import errno
import signal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from elfkit.cli.app import app, friendly
from elfkit.pipeline.interrupts import Interrupted

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "recipes" / "tiny.yaml")


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})
    return result.exit_code, result.output


def assert_clean(code: int, output: str, *needles: str, exit_code: int = 2) -> None:
    assert code == exit_code, output
    assert "Traceback" not in output
    flat = " ".join(output.replace("│", " ").split())   # panel borders and wrapping out of the way
    for n in needles:
        assert n in flat, (n, flat)


def test_binary_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_bytes(bytes(range(256)))
    assert_clean(*cli("recipe", "validate", str(p)), "r.yaml:2: not a UTF-8 text file (byte 0x80 at offset 128)")


def test_set_with_an_empty_key_blames_the_option():
    code, out = cli("recipe", "validate", TINY, "--set", "=3")
    assert_clean(code, out, "--set '=3': the key before '=' is empty")
    assert "tiny.yaml:" not in out


def test_embedder_backbone_width_mismatch_names_the_keys():
    assert_clean(*cli("recipe", "validate", TINY, "--set", "backbone.latent_dim=256"),
                 f"--set backbone.latent_dim=256 (applied to {TINY}): backbone.latent_dim is 256",
                 "the embedder 'minilm' (embedder.name,", "produces 384-d latents")


def test_export_options_are_checked_before_the_checkpoint(tmp_path):
    missing = str(tmp_path / "nope.pt")
    assert_clean(*cli("export", missing, "--precision", "fp8"),
                 "--precision 'fp8' is not supported; choose one of: fp32, fp16, bf16")
    code, out = cli("export", missing, "--batch", "a:b:c")
    assert_clean(code, out, "--batch: expected MIN:OPT:MAX", "got 'a:b:c'")   # no emoji for ':b:'


def test_out_naming_an_existing_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("keep me")
    for args in (("run", TINY), ("train", TINY), ("sample", str(tmp_path / "c.pt")), ("export", str(tmp_path / "c.pt")),
                 ("sweep", TINY)):
        assert_clean(*cli(*args, "--out", str(f)), f"--out {f} is an existing file, not a directory")
    assert f.read_text() == "keep me"
    d = tmp_path / "a-dir"
    d.mkdir()
    assert_clean(*cli("report", str(tmp_path), str(tmp_path), "--out", str(d)), f"--out {d} is a directory")


def test_sample_set_accepts_only_sampling_keys(tmp_path):
    assert_clean(*cli("sample", str(tmp_path / "c.pt"), "--set", "sampler.steps=4", "--set", "train.steps=5"),
                 "--set 'train.steps=5': elfkit sample accepts only sample.* and eval.* keys, not 'train.steps'",
                 "trained with the recipe stored in its checkpoint")


def test_user_text_is_not_read_as_markup_or_emoji():
    assert_clean(*cli("recipe", "validate", TINY, "--set", "sampler=[models]:b:"),
                 "unknown sampler '[models]:b:'")
    code, out = cli("recipe", "validate", TINY, "--set", "name=[bold]x:b:")
    assert code == 0 and "[bold]x:b:" not in out and "ok" in out


def test_plugin_path_leaving_the_recipe_folder_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    recipe = folder / "r.yaml"
    recipe.write_text(Path(TINY).read_text().replace("seed: 0", "seed: 0\nplugins: [../../evil.py]"))
    assert_clean(*cli("recipe", "validate", str(recipe)), "plugins: '../../evil.py' resolves to",
                 "outside the recipe's folder", "Nothing was run")
    assert not marker.exists()


def _raises(exc: BaseException):
    @friendly
    def command() -> None:
        raise exc
    return command


@pytest.mark.parametrize("signum, code, name", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"),
                                                (signal.SIGTERM, 143, "SIGTERM")])
def test_interruptions_exit_with_the_signal_code_and_say_what_was_kept(capsys, signum, code, name):
    err = Interrupted(signum)
    err.stage, err.kept = "data preparation", ["No checkpoint had been written yet."]
    with pytest.raises(typer.Exit) as e:
        _raises(err)()
    assert e.value.exit_code == code
    text = " ".join(capsys.readouterr().err.split())
    assert f"Interrupted by {name} during data preparation. No checkpoint had been written yet." in text
    assert "Traceback" not in text


def test_friendly_restores_the_signal_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit):
        _raises(KeyboardInterrupt())()
    assert signal.getsignal(signal.SIGTERM) is before


def test_path_errors_a_person_caused_are_messages(capsys):
    with pytest.raises(typer.Exit) as e:
        _raises(PermissionError(errno.EACCES, "Permission denied", "/root/x"))()
    assert e.value.exit_code == 2
    assert "/root/x: Permission denied" in capsys.readouterr().err
    with pytest.raises(ValueError):   # a bug still shows its traceback
        _raises(ValueError("bug"))()


def test_binary_or_non_object_samples_file(tmp_path):
    binary = tmp_path / "samples.jsonl"
    binary.write_bytes(b'{"text": "a"}\n\xe0\x80garbage\n')
    assert_clean(*cli("eval", str(binary), "--recipe", TINY), "samples.jsonl:2: not a UTF-8 text file (byte 0xe0")
    listed = tmp_path / "list.jsonl"
    listed.write_text("[1, 2]\n")
    assert_clean(*cli("eval", str(listed), "--recipe", TINY), "list.jsonl:1: not a sample record")
