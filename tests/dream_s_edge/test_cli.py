"""Tests for the `dream-s-edge` CLI: user errors are one line on stderr with exit status 2."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dream_s_edge.cli import EXIT_USER_ERROR, main


@pytest.fixture()
def images(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8)).save(cmyk)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    alpha = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8)).save(alpha)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(deep)
    return {"cmyk": cmyk, "corrupt": corrupt, "alpha": alpha, "deep": deep, "missing": tmp_path / "nope.png"}


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", "not found"),
        ("corrupt", "corrupt or truncated"),
        ("cmyk", "CMYK"),
        ("alpha", "alpha"),
        ("deep", "16-bit"),
    ],
)
def test_bad_images_fail_with_one_line(images, capsys, case, words):
    code = main(["generate", "--image", str(images[case]), "What is this?"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert err.startswith("error: ") and words in err and "Hint:" in err and err.count("\n") == 1


def test_empty_question_and_unknown_model(tmp_path, capsys):
    assert main(["generate", "   "]) == EXIT_USER_ERROR
    assert "question is empty" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "no-model"), "Hi"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "no-model" in err and "SmolVLM" in err


def test_unknown_example_and_tree(capsys):
    assert main(["generate", "--image", "example:unicorn", "Hi"]) == EXIT_USER_ERROR
    assert "astronaut" in capsys.readouterr().err
    assert main(["generate", "--speculative", "--tree", "bushy", "Hi"]) == EXIT_USER_ERROR
    assert "bushy" in capsys.readouterr().err


def test_prompt_longer_than_context_is_refused(default_target_dir, capsys):
    code = main(["generate", "--image", "example:astronaut", "--max-context", "40", "Describe it."])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "longer than the context" in err and "--max-context" in err


def test_console_script_prints_no_traceback(tmp_path):
    script = [sys.executable, "-c", "from dream_s_edge.cli import main; raise SystemExit(main())"]
    done = subprocess.run(
        [*script, "generate", "--image", str(tmp_path / "x.png"), "Hi"], capture_output=True, text=True
    )
    assert done.returncode == EXIT_USER_ERROR
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error: Image not found")


def test_parser_builds_without_torch():
    code = "import sys; from dream_s_edge.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_config_flags_override_presets_only_when_given():
    from dream_s_edge.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["target", "train-vision", "--preset", "smoke", "--lr", "0.01", "--no-resume"])
    from dream_s_edge.cli_flags import given_flags

    assert given_flags(args, ["lr", "resume", "seed"]) == {"lr": 0.01, "resume": False}


def test_train_feature_layers_flag_parses_a_comma_list(capsys):
    from dream_s_edge.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--feature-layers", "15,30"])
    assert args.feature_layers == (15, 30)
    assert parser.parse_args(["train", "--data", "d", "--out", "o"]).feature_layers is None
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--feature-layers", "a,b"])
    assert "comma-separated integers" in capsys.readouterr().err
